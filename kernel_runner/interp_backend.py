"""The fast backend: one interpreter program (bpf/interp.bpf.c) driven by a script map.

The backend parses the interpreter object once and keeps, per map size, one loaded program
instance whose sockmap and sockhash both have that size (a program binds its maps at load
time, and the size is an observable: inserts and redirects beyond it fail).  All instances
share one "script" and one "records" map, each mmap'ed once, so preparing a case is:

    write the case's script into the script mmap, zero the run counter,
    hand out the instance's program and the map of the case's type.

No syscall happens in prepare() once the size's instance exists; finish() deletes the keys
the case inserted and detaches.  runs() decodes the records straight from the mmap.

Objects: `InterpBackend(obj_path=None)` finds or builds the object (see find_object).  Not
thread-safe; one backend per worker process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections import OrderedDict
from pathlib import Path

from diffuzz.contract.case import Case
from kernel_runner import bpf_sys, script
from kernel_runner.backend import KernelUnsupported, RawRun
from kernel_runner.cache import cache_dir
from kernel_runner.elf_loader import BpfObject, ElfError, LoadedObject

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "bpf" / "interp.bpf.c"
BUILT = ROOT / "bpf" / "build" / "interp.bpf.o"
# Must match bpf/Makefile.
CLANG_FLAGS = ("-O2", "-g", "-target", "bpf", "-mcpu=v3", "-I/usr/include/x86_64-linux-gnu", "-Wall", "-Werror")
MAX_INSTANCES = 32  # map sizes kept loaded (15-30 ms to load one; generated cases use a few sizes)


def find_object() -> Path:
    """The interpreter object to load.

    bpf/build/interp.bpf.o (from `make -C bpf`) when it is at least as new as the source (or
    when the source is absent, as in a VM image that ships only the object); otherwise the
    source compiled with clang into ~/.cache/diffuzz/, keyed by a hash of source and flags.
    Raises KernelUnsupported when neither works, saying how to fix it.
    """
    if BUILT.exists() and (not SOURCE.exists() or BUILT.stat().st_mtime >= SOURCE.stat().st_mtime):
        return BUILT
    if not SOURCE.exists():
        raise KernelUnsupported(f"no interpreter object: neither {BUILT} nor its source {SOURCE} exists")
    text = SOURCE.read_bytes()
    digest = hashlib.sha256(text + "\0".join(CLANG_FLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"interp-{digest}.bpf.o"
    if target.exists():
        return target
    clang = shutil.which("clang")
    if clang is None:
        raise KernelUnsupported(f"clang is needed to build {SOURCE}: install clang (apt install clang), "
                                f"or run `make -C bpf` where clang exists and ship {BUILT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".o.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([clang, *CLANG_FLAGS, "-c", str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelUnsupported(f"clang failed to build {SOURCE}:\n{proc.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class InterpCaseProgram:
    """One case's view of an interpreter instance (implements backend.CaseProgram).

    attach/detach/insert/delete return 0 or -errno, as the case's observables need.  The
    keys successfully inserted are remembered so finish() can empty the map without
    scanning it.
    """

    def __init__(self, program: bpf_sys.Program, sock_map: bpf_sys.Map, records: memoryview) -> None:
        self.map_fd = sock_map.fd
        self._program = program
        self._map = sock_map
        self._records = records
        self._keys: set[int] = set()
        self._raws: list[RawRun] = []  # the records decoded so far
        self.finished = False

    def attach(self) -> int:
        """BPF_PROG_ATTACH to the case's map as BPF_SK_MSG_VERDICT; 0 or -errno."""
        return self._program.attach_rc(self.map_fd)

    def detach(self) -> int:
        """BPF_PROG_DETACH from the case's map; 0 or -errno (-ENOENT if not attached)."""
        return self._program.detach_rc(self.map_fd)

    def insert(self, key: int, sock_fd: int, flags: int) -> int:
        """bpf_map_update_elem(map, key, sock_fd, flags); 0 or -errno."""
        rc = self._map.update_u32(key, sock_fd, flags)
        if rc == 0:
            self._keys.add(key)
        return rc

    def delete(self, key: int) -> int:
        """bpf_map_delete_elem(map, key); 0 or -errno (sockmap: -EINVAL, sockhash: -ENOENT if absent)."""
        return self._map.delete_u32(key)

    def runs(self) -> tuple[int, list[RawRun]]:
        """(every run so far, the first MAX_RUN_RECORDS of them), read from the records mmap.
        A slot is written once, by its run, so only the slots new since the last call are
        decoded (the executor asks after every send)."""
        count = script.record_count(self._records)
        self._raws += script.decode_runs(self._records, count, start=len(self._raws))
        return count, list(self._raws)

    def finish(self) -> None:
        """Delete every key the case inserted, then detach.  Idempotent."""
        if self.finished:
            return
        for key in self._keys:
            self._map.delete_u32(key)  # -EINVAL/-ENOENT when the case (or a close) removed it already
        self._keys.clear()
        self._program.detach_rc(self.map_fd)  # -ENOENT when the case detached it itself
        self.finished = True


class _Instance:
    """One loaded interpreter whose sockmap and sockhash have `size` entries."""

    def __init__(self, size: int, loaded: LoadedObject) -> None:
        self.size = size
        self.loaded = loaded
        self.program = loaded.program
        self.maps = {"sockmap": loaded.maps["sockmap"], "sockhash": loaded.maps["sockhash"]}


class InterpBackend:
    """backend.Backend over the interpreter program.  Owns every fd it creates; close() them all."""

    name = "interp"

    def __init__(self, obj_path: str | os.PathLike[str] | None = None, max_instances: int = MAX_INSTANCES) -> None:
        path = Path(obj_path) if obj_path is not None else find_object()
        try:
            self._obj = BpfObject.open(str(path))
        except ElfError as e:
            raise KernelUnsupported(f"cannot use the interpreter object: {e}") from None
        for name, size in (("script", script.SCRIPT_SIZE), ("records", script.RECORDS_SIZE)):
            d = self._obj.maps.get(name)
            if d is None or d.value_size != size:
                raise KernelUnsupported(f"{path}: map {name!r} does not have the layout of kernel_runner/script.py "
                                        f"({d.value_size if d else 'missing'} != {size} bytes); rebuild it "
                                        "(make -C bpf)")
        self._max_instances = max_instances
        self._instances: OrderedDict[int, _Instance] = OrderedDict()
        self._active: InterpCaseProgram | None = None
        self._shared: dict[str, bpf_sys.Map] = {}
        self._views: list[memoryview] = []
        try:
            for name in ("script", "records"):
                d = self._obj.maps[name]
                self._shared[name] = bpf_sys.map_create(d.map_type, d.key_size, d.value_size, d.max_entries,
                                                        d.map_flags, name)
            self._script = memoryview(self._shared["script"].mmap())
            self._records = memoryview(self._shared["records"].mmap())
            self._views = [self._script, self._records]
        except OSError as e:
            self.close()
            raise KernelUnsupported(f"cannot create the interpreter's maps ({e}); needs root (CAP_BPF) and "
                                    "BPF_F_MMAPABLE array maps (Linux >= 5.5)") from None

    def _instance(self, size: int) -> _Instance:
        inst = self._instances.get(size)
        if inst is not None:
            self._instances.move_to_end(size)
            return inst
        while len(self._instances) >= self._max_instances:
            _, old = self._instances.popitem(last=False)
            old.loaded.close()
        try:
            loaded = self._obj.load(max_entries={"sockmap": size, "sockhash": size}, reuse=self._shared,
                                    name="diffuzz_interp")
        except OSError as e:
            if isinstance(e, bpf_sys.VerifierError):
                raise  # a bug in interp.bpf.c, not a missing feature: keep the log
            raise KernelUnsupported(f"cannot load the interpreter with map size {size}: {e}") from None
        inst = _Instance(size, loaded)
        self._instances[size] = inst
        return inst

    def prepare(self, case: Case) -> InterpCaseProgram:
        """A CaseProgram for this case: the script written, run counter zeroed, map empty,
        program not attached.  Finishes a previous CaseProgram the caller left unfinished."""
        if self._active is not None and not self._active.finished:
            self._active.finish()
            self._active = None
        encoded = script.encode_script(
            case.program, script.MAP_KIND_SOCKHASH if case.map.type == "sockhash" else script.MAP_KIND_SOCKMAP)
        inst = self._instance(case.map.size)
        self._script[: len(encoded)] = encoded
        # Only the counter needs zeroing: a run writes every field of its record, and
        # decode_runs reads no more steps than the run recorded.
        self._records[:8] = bytes(8)
        self._active = InterpCaseProgram(inst.program, inst.maps[case.map.type], self._records)
        return self._active

    def close(self) -> None:
        """Finish the active case, unload every instance, unmap and close the shared maps."""
        if self._active is not None and not self._active.finished:
            self._active.finish()
        self._active = None
        for inst in self._instances.values():
            inst.loaded.close()
        self._instances.clear()
        for view in self._views:
            view.release()
        self._views = []
        for m in self._shared.values():
            m.close()
        self._shared = {}

    def __enter__(self) -> InterpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
