"""A small loader for clang-built BPF objects (pyelftools): parse once, relocate and load many.

What it understands, and nothing more (anything else is an ElfError naming what it found):

- maps defined libbpf-style in SEC(".maps") with BTF: `__uint(type, ...)`, `__uint(max_entries, ...)`,
  `__uint(map_flags, ...)`, `__type(key, T)` / `__type(value, T)` or `__uint(key_size/value_size, n)`.
  The attributes are read from the object's .BTF section (the DATASEC ".maps" names one VAR per map;
  `__uint(x, n)` is encoded as a pointer to an array of n elements, `__type(x, T)` as a pointer to T).
- programs: every global function symbol in an executable section; the section name gives the
  program type (SEC("sk_msg") -> BPF_PROG_TYPE_SK_MSG, expected attach BPF_SK_MSG_VERDICT).
- relocations: R_BPF_64_64 on an ld_imm64 that references a map symbol, patched to
  BPF_PSEUDO_MAP_FD with the map's fd (what libbpf does in bpf_object__relocate_data).
  Global data (.rodata/.data/.bss) and bpf-to-bpf calls are not supported: the interpreter
  avoids both.
- the license from SEC("license").

BpfObject.open() parses (about a millisecond); BpfObject.load() creates the maps (with
per-load max_entries overrides, or reusing existing Map objects), copies and patches the
instructions, and loads the program.  The returned LoadedObject owns what it created.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from kernel_runner import bpf_sys

EM_BPF = 247
R_BPF_64_64 = 1
BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW

# SEC() name -> (program type, expected attach type)
SECTION_PROG_TYPES: Mapping[str, tuple[int, int]] = {
    "sk_msg": (bpf_sys.BPF_PROG_TYPE_SK_MSG, bpf_sys.BPF_SK_MSG_VERDICT),
}


class ElfError(ValueError):
    """The object file cannot be loaded by this loader; the message says why and where."""


@dataclass(frozen=True)
class MapDef:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int = 0


@dataclass(frozen=True)
class ProgramDef:
    name: str  # the function's symbol
    section: str
    prog_type: int
    expected_attach_type: int
    insns: bytes
    map_relocs: tuple[tuple[int, str], ...]  # (instruction index, map name)

    def relocate(self, map_fds: Mapping[str, int]) -> bytes:
        """The instructions with every map reference bound to its fd: the ld_imm64 gets
        src_reg = BPF_PSEUDO_MAP_FD and imm = fd (libbpf: bpf_object__relocate_data)."""
        insns = bytearray(self.insns)
        for insn_index, map_name in self.map_relocs:
            off = insn_index * 8
            insns[off + 1] = (insns[off + 1] & 0x0F) | (bpf_sys.BPF_PSEUDO_MAP_FD << 4)  # src_reg: high nibble
            struct.pack_into("<i", insns, off + 4, map_fds[map_name])
        return bytes(insns)


# --------------------------------------------------------------------------------------
# BTF (just enough to read map definitions)

BTF_MAGIC = 0xEB9F
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19
# bytes that follow the 12-byte common header: (fixed, per vlen item)
_KIND_EXTRA: Mapping[int, tuple[int, int]] = {
    KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12), KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12), KIND_DECL_TAG: (4, 0), KIND_ENUM64: (0, 12),
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


@dataclass(frozen=True)
class _BtfType:
    kind: int
    name: str
    size_or_type: int
    extra: bytes  # the kind-specific bytes after the header
    vlen: int


class Btf:
    """The type section of a .BTF blob, indexed by type id (id 0 is void)."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise ElfError(".BTF: too short for a header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", blob)
        if magic != BTF_MAGIC:
            raise ElfError(f".BTF: bad magic {magic:#x} (big-endian object?)")
        types = blob[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[_BtfType | None] = [None]
        pos = 0
        while pos < len(types):
            name_off, info, size_or_type = struct.unpack_from("<III", types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per = _KIND_EXTRA.get(kind, (0, 0))
            n = fixed + per * vlen
            self.types.append(_BtfType(kind, self.string(name_off), size_or_type, types[pos + 12 : pos + 12 + n], vlen))
            pos += 12 + n

    def string(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else len(self._strings)].decode()

    def get(self, type_id: int) -> _BtfType:
        t = self.types[type_id] if 0 < type_id < len(self.types) else None
        if t is None:
            raise ElfError(f".BTF: type id {type_id} does not exist")
        return t

    def skip_modifiers(self, type_id: int) -> int:
        while self.get(type_id).kind in _MODIFIERS:
            type_id = self.get(type_id).size_or_type
        return type_id

    def sizeof(self, type_id: int) -> int:
        t = self.get(self.skip_modifiers(type_id))
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", t.extra)
            return nelems * self.sizeof(elem)
        if t.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT, KIND_DATASEC):
            return t.size_or_type
        raise ElfError(f".BTF: type {t.name or type_id} of kind {t.kind} has no size")

    def members(self, type_id: int) -> list[tuple[str, int]]:
        t = self.get(self.skip_modifiers(type_id))
        if t.kind not in (KIND_STRUCT, KIND_UNION):
            raise ElfError(f".BTF: type {t.name or type_id} is not a struct")
        out = []
        for i in range(t.vlen):
            name_off, member_type, _offset = struct.unpack_from("<III", t.extra, 12 * i)
            out.append((self.string(name_off), member_type))
        return out

    def datasec_vars(self, section: str) -> list[tuple[str, int]]:
        """(variable name, its type id) for each VAR in the DATASEC named `section`."""
        for t in self.types[1:]:
            if t is not None and t.kind == KIND_DATASEC and t.name == section:
                out = []
                for i in range(t.vlen):
                    var_id, _offset, _size = struct.unpack_from("<III", t.extra, 12 * i)
                    var = self.get(var_id)
                    out.append((var.name, var.size_or_type))
                return out
        return []


def _map_def(btf: Btf, name: str, type_id: int) -> MapDef:
    """Decode one libbpf map definition struct (see bpf_helpers.h __uint/__type)."""
    attrs: dict[str, int] = {}
    for member, member_type in btf.members(type_id):
        ptr = btf.get(member_type)
        if ptr.kind != KIND_PTR:
            raise ElfError(f"map {name}: member {member} is not a __uint()/__type() pointer")
        target = ptr.size_or_type
        if member in ("key", "value"):
            attrs[f"{member}_size"] = btf.sizeof(target)
        else:
            arr = btf.get(target)
            if arr.kind != KIND_ARRAY:
                raise ElfError(f"map {name}: member {member} is not __uint(name, value)")
            attrs[member] = struct.unpack_from("<III", arr.extra)[2]
    missing = [k for k in ("type", "key_size", "value_size", "max_entries") if k not in attrs]
    if missing:
        raise ElfError(f"map {name}: definition lacks {', '.join(missing)}")
    unknown = sorted(set(attrs) - {"type", "key_size", "value_size", "max_entries", "map_flags"})
    if unknown:
        raise ElfError(f"map {name}: unsupported attribute(s) {', '.join(unknown)}")
    return MapDef(name, attrs["type"], attrs["key_size"], attrs["value_size"], attrs["max_entries"],
                  attrs.get("map_flags", 0))


# --------------------------------------------------------------------------------------
# The object


class LoadedObject:
    """The kernel objects of one load: `program` and `maps` by name.  Owns the program and
    the maps it created (not the ones passed in as `reuse`); close() releases them."""

    def __init__(self, program: bpf_sys.Program, maps: dict[str, bpf_sys.Map], owned: list[bpf_sys.Map]) -> None:
        self.program = program
        self.maps = maps
        self._owned = owned

    def close(self) -> None:
        self.program.close()
        for m in self._owned:
            m.close()
        self._owned = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class BpfObject:
    """A parsed BPF ELF object: map definitions, programs with their relocations, license."""

    def __init__(self, path: str, maps: dict[str, MapDef], programs: dict[str, ProgramDef], license: str) -> None:
        self.path = path
        self.maps = maps
        self.programs = programs
        self.license = license

    @classmethod
    def open(cls, path: str) -> BpfObject:
        """Parse the object file; ElfError (naming the file) if it is not one this loader takes."""
        try:
            with open(path, "rb") as f:
                return cls._parse(path, ELFFile(f))
        except OSError as e:
            raise ElfError(f"{path}: cannot read: {e.strerror}") from None
        except ELFError as e:
            raise ElfError(f"{path}: not a valid ELF object: {e}") from None
        except ElfError as e:
            raise ElfError(f"{path}: {e}") from None

    @classmethod
    def _parse(cls, path: str, elf: ELFFile) -> BpfObject:
        if elf["e_machine"] not in ("EM_BPF", EM_BPF) or not elf.little_endian:
            raise ElfError(f"not a little-endian BPF object (machine {elf['e_machine']})")
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise ElfError("no symbol table")
        symbols = list(symtab.iter_symbols())
        license_sec = elf.get_section_by_name("license")
        license = license_sec.data().split(b"\0", 1)[0].decode() if license_sec is not None else ""

        maps: dict[str, MapDef] = {}
        maps_sec = elf.get_section_by_name(".maps")
        maps_index = None
        if maps_sec is not None:
            maps_index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".maps")
            btf_sec = elf.get_section_by_name(".BTF")
            if btf_sec is None:
                raise ElfError(".maps needs BTF (compile with -g)")
            btf = Btf(btf_sec.data())
            for name, type_id in btf.datasec_vars(".maps"):
                maps[name] = _map_def(btf, name, type_id)

        programs: dict[str, ProgramDef] = {}
        for index, sec in enumerate(elf.iter_sections()):
            if sec["sh_type"] != "SHT_PROGBITS" or not sec["sh_flags"] & 0x4 or sec.data_size == 0:  # SHF_EXECINSTR
                continue
            if sec.name not in SECTION_PROG_TYPES:
                raise ElfError(f"program section {sec.name!r} is not one of {', '.join(SECTION_PROG_TYPES)}")
            prog_type, attach_type = SECTION_PROG_TYPES[sec.name]
            data = sec.data()
            relocs: list[tuple[int, int]] = []  # (byte offset, symbol index)
            for rel_sec in elf.iter_sections():
                if isinstance(rel_sec, RelocationSection) and rel_sec["sh_info"] == index:
                    for rel in rel_sec.iter_relocations():
                        relocs.append((rel["r_offset"], rel["r_info_sym"]))
            for sym in symbols:
                if (sym["st_info"]["type"] != "STT_FUNC" or sym["st_info"]["bind"] != "STB_GLOBAL"
                        or sym["st_shndx"] != index):
                    continue
                start, size = sym["st_value"], sym["st_size"]
                map_relocs = []
                for offset, sym_index in relocs:
                    if not start <= offset < start + size:
                        continue
                    target = symbols[sym_index]
                    where = f"{sec.name}+{offset:#x} -> {target.name or sym_index}"
                    if target["st_shndx"] != maps_index or target.name not in maps:
                        raise ElfError(f"relocation {where}: only map references are supported "
                                       "(no global data, no bpf-to-bpf calls)")
                    if data[offset] != BPF_LD_IMM64:
                        raise ElfError(f"relocation {where}: not on an ld_imm64 instruction")
                    map_relocs.append(((offset - start) // 8, target.name))
                programs[sym.name] = ProgramDef(sym.name, sec.name, prog_type, attach_type,
                                                bytes(data[start : start + size]), tuple(map_relocs))
        if not programs:
            raise ElfError("no programs (no global function in an executable section)")
        return cls(path, maps, programs, license)

    def load(self, program: str | None = None, *, max_entries: Mapping[str, int] | None = None,
             reuse: Mapping[str, bpf_sys.Map] | None = None, name: str | None = None) -> LoadedObject:
        """Create the maps the program references and load it.

        program:     which program (the only one if None).
        max_entries: per-map overrides of max_entries, by map name.
        reuse:       existing Map objects to bind instead of creating new ones (not owned by
                     the result); each must match the definition's type, key and value sizes.
        Raises OSError (or bpf_sys.VerifierError with the log); nothing leaks on failure.
        """
        if program is None:
            if len(self.programs) != 1:
                raise ValueError(f"{self.path} has programs {', '.join(self.programs)}: name one")
            pdef = next(iter(self.programs.values()))
        else:
            pdef = self.programs[program]
        overrides = max_entries or {}
        unknown = set(overrides) - set(self.maps)
        if unknown:
            raise ValueError(f"max_entries for unknown map(s) {', '.join(sorted(unknown))}")
        reuse = reuse or {}
        owned: list[bpf_sys.Map] = []
        maps: dict[str, bpf_sys.Map] = {}
        try:
            for map_name in dict.fromkeys(n for _, n in pdef.map_relocs):
                d = self.maps[map_name]
                if map_name in reuse:
                    m = reuse[map_name]
                    if (m.map_type, m.key_size, m.value_size) != (d.map_type, d.key_size, d.value_size):
                        raise ValueError(f"reused map {map_name} does not match its definition {d}")
                else:
                    m = bpf_sys.map_create(d.map_type, d.key_size, d.value_size, overrides.get(map_name, d.max_entries),
                                           d.map_flags, map_name)
                    owned.append(m)
                maps[map_name] = m
            insns = pdef.relocate({map_name: m.fd for map_name, m in maps.items()})
            prog = bpf_sys.prog_load(pdef.prog_type, insns, self.license, pdef.expected_attach_type,
                                     name or pdef.name)
        except BaseException:
            for m in owned:
                m.close()
            raise
        return LoadedObject(prog, maps, owned)
