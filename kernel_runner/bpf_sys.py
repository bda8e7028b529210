"""The bpf(2) system call through ctypes: maps, programs, attach/detach, and mmap of array maps.

Two calling styles, because the executor needs both:

- Raising style (`map_create`, `prog_load`, `Map.update`, `Map.lookup`, `Program.attach`, ...):
  return a value or raise OSError(errno, message).  Used for set-up, where a failure is a bug
  or a missing kernel feature.
- "0 or -errno" style (`Map.update_u32`, `Map.delete_u32`, `Program.attach_rc`,
  `Program.detach_rc`): return 0 on success or the negative errno, never raise.  Used for the
  calls whose result is an observable of the case (docs/execution.md: inserts, map_insert,
  map_delete, attach, detach events), several times per case, so they are kept cheap: each
  object builds its `union bpf_attr` once and only rewrites the fields that change.

Every kernel object is owned by a Python object (Map, Program) that closes its fd exactly once:
call close(), use it as a context manager, or let the garbage collector do it as a last resort.
Nothing here pins to bpffs.

Constants carry the kernel's names from include/uapi/linux/bpf.h.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from types import TracebackType
from typing import Self

# --------------------------------------------------------------------------------------
# Constants (include/uapi/linux/bpf.h)

NR_bpf = 321  # x86_64

# enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9

# enum bpf_map_type
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_SOCKMAP = 15
BPF_MAP_TYPE_SOCKHASH = 18

# map_flags
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10

# update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_prog_type / enum bpf_attach_type
BPF_PROG_TYPE_SK_MSG = 16
BPF_SK_MSG_VERDICT = 7

# ld_imm64 src_reg values that name a map
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2

BPF_OBJ_NAME_LEN = 16

# Verifier log: the retry after a failed load uses this much, growing on ENOSPC up to the max.
LOG_SIZE_RETRY = 1 << 20
LOG_SIZE_MAX = 1 << 26

# --------------------------------------------------------------------------------------
# union bpf_attr, one Structure per command.  The kernel accepts a shorter attr than its own
# (the rest reads as zero), so each carries only the fields we set.

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class MapCreateAttr(ctypes.Structure):
    _fields_ = (
        ("map_type", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("inner_map_fd", _u32),
        ("numa_node", _u32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


class MapElemAttr(ctypes.Structure):
    _fields_ = (("map_fd", _u32), ("key", _u64), ("value", _u64), ("flags", _u64))


class ProgLoadAttr(ctypes.Structure):
    _fields_ = (
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
    )


class ProgAttachAttr(ctypes.Structure):
    _fields_ = (
        ("target_fd", _u32),
        ("attach_bpf_fd", _u32),
        ("attach_type", _u32),
        ("attach_flags", _u32),
        ("replace_bpf_fd", _u32),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint)
_get_errno = ctypes.get_errno

_ELEM_SIZE = ctypes.sizeof(MapElemAttr)
_ATTACH_SIZE = ctypes.sizeof(ProgAttachAttr)
_NO_FD = 0xFFFF_FFFF  # (u32)-1: what a closed object leaves in its attr, so the kernel answers EBADF


def sys_bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr): the result (>= 0) or -errno.  Never raises."""
    rc = _syscall(NR_bpf, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
    return rc if rc >= 0 else -_get_errno()


def _raise(errno: int, what: str) -> OSError:
    return OSError(errno, f"{what}: {os.strerror(errno)}")


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # already gone (EBADF); nothing else can fail for a bpf fd


# --------------------------------------------------------------------------------------
# Maps


class Map:
    """A BPF map fd and its attributes.  Owns the fd (and, if mmap()ed, the mapping).

    The u32 fast paths (`update_u32`, `delete_u32`, `lookup_u32`) reuse one attr and one
    key/value buffer per map: not thread-safe, like the executor that calls them.
    """

    def __init__(self, fd: int, map_type: int, key_size: int, value_size: int, max_entries: int,
                 map_flags: int = 0, name: str = "") -> None:
        self.fd = fd
        self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.map_flags = map_flags
        self.name = name
        self._mmap: mmap.mmap | None = None
        self._key32 = _u32()
        self._val32 = _u32()
        self._elem = MapElemAttr(map_fd=fd, key=ctypes.addressof(self._key32), value=ctypes.addressof(self._val32))
        self._elem_addr = ctypes.addressof(self._elem)
        # BPF_MAP_DELETE_ELEM's last field is `key`: a non-zero value/flags there is EINVAL (CHECK_ATTR)
        self._del = MapElemAttr(map_fd=fd, key=ctypes.addressof(self._key32))
        self._del_addr = ctypes.addressof(self._del)

    # ---- fast, "0 or -errno" -----------------------------------------------------------

    def update_u32(self, key: int, value: int, flags: int = BPF_ANY) -> int:
        """bpf_map_update_elem(map, &key, &value, flags) with u32 key and value (for a sockmap
        or sockhash the value is the socket fd); 0 or -errno."""
        self._key32.value = key
        self._val32.value = value
        self._elem.flags = flags
        rc = _syscall(NR_bpf, BPF_MAP_UPDATE_ELEM, self._elem_addr, _ELEM_SIZE)
        return 0 if rc >= 0 else -_get_errno()

    def delete_u32(self, key: int) -> int:
        """bpf_map_delete_elem(map, &key) with a u32 key; 0 or -errno.  An absent key is -EINVAL
        on a sockmap (__sock_map_delete) and -ENOENT on a sockhash (sock_hash_delete_elem)."""
        self._key32.value = key
        rc = _syscall(NR_bpf, BPF_MAP_DELETE_ELEM, self._del_addr, _ELEM_SIZE)
        return 0 if rc >= 0 else -_get_errno()

    def lookup_u32(self, key: int) -> int:
        """bpf_map_lookup_elem with u32 key and a u32 value: the value (>= 0) or -errno.
        (A sockmap answers with the socket cookie only when value_size is 8.)"""
        self._key32.value = key
        self._elem.flags = 0
        rc = _syscall(NR_bpf, BPF_MAP_LOOKUP_ELEM, self._elem_addr, _ELEM_SIZE)
        return self._val32.value if rc >= 0 else -_get_errno()

    # ---- general, raising --------------------------------------------------------------

    def _elem_call(self, cmd: int, key: bytes, value: ctypes.Array | None, flags: int, what: str) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"{what}: key is {len(key)} bytes, map {self.name!r} takes {self.key_size}")
        kbuf = ctypes.create_string_buffer(key, len(key))
        attr = MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kbuf),
                           value=0 if value is None else ctypes.addressof(value), flags=flags)
        rc = sys_bpf(cmd, attr)
        if rc < 0:
            raise _raise(-rc, f"{what} on map {self.name or self.fd}")

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """bpf_map_update_elem with raw key and value bytes; raises OSError."""
        if len(value) != self.value_size:
            raise ValueError(f"BPF_MAP_UPDATE_ELEM: value is {len(value)} bytes, map takes {self.value_size}")
        self._elem_call(BPF_MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), flags,
                        "BPF_MAP_UPDATE_ELEM")

    def lookup(self, key: bytes) -> bytes:
        """bpf_map_lookup_elem: the value bytes; raises OSError (ENOENT if absent)."""
        out = ctypes.create_string_buffer(self.value_size)
        self._elem_call(BPF_MAP_LOOKUP_ELEM, key, out, 0, "BPF_MAP_LOOKUP_ELEM")
        return out.raw

    def delete(self, key: bytes) -> None:
        """bpf_map_delete_elem; raises OSError (ENOENT if absent)."""
        self._elem_call(BPF_MAP_DELETE_ELEM, key, None, 0, "BPF_MAP_DELETE_ELEM")

    def mmap(self) -> mmap.mmap:
        """The value area of a BPF_F_MMAPABLE array map, mapped shared read/write.

        The map owns the mapping (one per map, created on first call) and unmaps it in close().
        Values are laid out back to back, each rounded up to 8 bytes (kernel: array->elem_size).
        Callers must release memoryviews/ctypes views of it before close().
        """
        if self._mmap is None:
            if self.map_type != BPF_MAP_TYPE_ARRAY or not self.map_flags & BPF_F_MMAPABLE:
                raise ValueError(f"map {self.name!r} is not an mmap'able array (needs BPF_F_MMAPABLE)")
            length = -(-((self.value_size + 7) & ~7) * self.max_entries // mmap.PAGESIZE) * mmap.PAGESIZE
            self._mmap = mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        return self._mmap

    def close(self) -> None:
        """Unmap and close the fd; safe to call twice."""
        if self._mmap is not None:
            m, self._mmap = self._mmap, None
            m.close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            # a later fast-path call then fails with EBADF instead of reaching a reused fd number
            self._elem.map_fd = self._del.map_fd = _NO_FD
            _close_fd(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            try:
                self.close()
            except BufferError:
                pass  # a view of the mmap is still alive; the kernel frees all at exit

    def __repr__(self) -> str:
        return (f"Map({self.name!r}, fd={self.fd}, type={self.map_type}, key={self.key_size}, "
                f"value={self.value_size}, max_entries={self.max_entries}, flags={self.map_flags:#x})")


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               map_flags: int = 0, name: str = "") -> Map:
    """BPF_MAP_CREATE; a Map owning the new fd.  Raises OSError with the kernel's errno
    (E2BIG for too many entries, EINVAL for bad sizes or flags, EPERM without CAP_BPF)."""
    attr = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                         max_entries=max_entries, map_flags=map_flags,
                         map_name=_obj_name(name))
    fd = sys_bpf(BPF_MAP_CREATE, attr)
    if fd < 0:
        raise _raise(-fd, f"BPF_MAP_CREATE {name or ''} (type {map_type}, key {key_size}, value {value_size}, "
                          f"max_entries {max_entries}, flags {map_flags:#x})")
    return Map(fd, map_type, key_size, value_size, max_entries, map_flags, name)


def _obj_name(name: str) -> bytes:
    """A kernel object name: at most 15 chars of [A-Za-z0-9_.] (bpf_obj_name_cpy), else empty."""
    clean = "".join(c for c in name if c.isalnum() or c in "_.")[: BPF_OBJ_NAME_LEN - 1]
    return clean.encode("ascii", "ignore")


# --------------------------------------------------------------------------------------
# Programs


class VerifierError(OSError):
    """BPF_PROG_LOAD failed; `log` holds the verifier log (also in the message)."""

    def __init__(self, errno: int, message: str, log: str) -> None:
        super().__init__(errno, message)
        self.log = log


class Program:
    """A loaded BPF program fd.  Owns the fd.  attach/detach keep one pre-built attr."""

    def __init__(self, fd: int, prog_type: int, expected_attach_type: int, name: str = "") -> None:
        self.fd = fd
        self.prog_type = prog_type
        self.expected_attach_type = expected_attach_type
        self.name = name
        self._attach = ProgAttachAttr(attach_bpf_fd=fd)
        self._attach_addr = ctypes.addressof(self._attach)

    def attach_rc(self, target_fd: int, attach_type: int = BPF_SK_MSG_VERDICT) -> int:
        """BPF_PROG_ATTACH of this program to target_fd (a sockmap/sockhash); 0 or -errno."""
        a = self._attach
        a.target_fd = target_fd
        a.attach_type = attach_type
        rc = _syscall(NR_bpf, BPF_PROG_ATTACH, self._attach_addr, _ATTACH_SIZE)
        return 0 if rc >= 0 else -_get_errno()

    def detach_rc(self, target_fd: int, attach_type: int = BPF_SK_MSG_VERDICT) -> int:
        """BPF_PROG_DETACH of this program from target_fd; 0 or -errno (-ENOENT when this
        program is not the one attached).  sock_map_prog_detach needs the prog fd."""
        a = self._attach
        a.target_fd = target_fd
        a.attach_type = attach_type
        rc = _syscall(NR_bpf, BPF_PROG_DETACH, self._attach_addr, _ATTACH_SIZE)
        return 0 if rc >= 0 else -_get_errno()

    def attach(self, target_fd: int, attach_type: int = BPF_SK_MSG_VERDICT) -> None:
        """As attach_rc, raising OSError."""
        rc = self.attach_rc(target_fd, attach_type)
        if rc < 0:
            raise _raise(-rc, f"BPF_PROG_ATTACH {self.name or self.fd} to fd {target_fd} type {attach_type}")

    def detach(self, target_fd: int, attach_type: int = BPF_SK_MSG_VERDICT) -> None:
        """As detach_rc, raising OSError."""
        rc = self.detach_rc(target_fd, attach_type)
        if rc < 0:
            raise _raise(-rc, f"BPF_PROG_DETACH {self.name or self.fd} from fd {target_fd} type {attach_type}")

    def close(self) -> None:
        """Close the fd (an attached program stays alive in the map until detached); idempotent."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self._attach.attach_bpf_fd = _NO_FD
            _close_fd(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        return f"Program({self.name!r}, fd={self.fd}, type={self.prog_type})"


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", expected_attach_type: int = 0,
              name: str = "") -> Program:
    """BPF_PROG_LOAD of raw instructions (8 bytes each, already relocated).

    The first attempt runs without a verifier log, which is the fastest load.  Only if it
    fails is the load repeated with log_level 1 and a large buffer (grown on ENOSPC), and a
    VerifierError carries the kernel's errno and the log in its message.
    """
    if len(insns) % 8:
        raise ValueError(f"BPF_PROG_LOAD: {len(insns)} bytes of instructions is not a multiple of 8")
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(insn_buf),
                        license=ctypes.addressof(lic), expected_attach_type=expected_attach_type,
                        prog_name=_obj_name(name))
    fd = sys_bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:
        return Program(fd, prog_type, expected_attach_type, name)
    first_errno = -fd
    log = ""
    size = LOG_SIZE_RETRY
    while size <= LOG_SIZE_MAX:
        buf = ctypes.create_string_buffer(size)
        attr.log_level, attr.log_size, attr.log_buf = 1, size, ctypes.addressof(buf)
        fd = sys_bpf(BPF_PROG_LOAD, attr)
        if fd >= 0:  # passed with a log (should not happen); keep it, the load is what was asked
            return Program(fd, prog_type, expected_attach_type, name)
        log = buf.value.decode(errors="replace")
        if -fd != 28:  # ENOSPC: log too small, the rest of the verdict is unknown; grow
            first_errno = -fd
            break
        size *= 4
    raise VerifierError(first_errno, f"BPF_PROG_LOAD {name or ''} ({len(insns) // 8} insns): "
                        f"{os.strerror(first_errno)}\nverifier log:\n{log.rstrip() or '(empty)'}", log)
