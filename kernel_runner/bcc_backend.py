"""The confirmation backend: per-case C (kernel_runner/c_codegen.py) compiled by bcc.

It implements kernel_runner/backend.py like the interpreter backend does, with nothing in
common with the interpreter program: the case's step lists are compiled into the program
as straight-line C, so a finding that reproduces here is not an artefact of the interpreter.

How a case gets its program:
1. c_codegen.bcc_source(case) writes the C.  The text depends only on the step lists and the
   map type, and names both maps by placeholder fds (`bpf_pseudo_fd(1, ...)`, the bcc 0.26
   way to name a map bcc did not create).
2. bcc compiles it once per distinct text (about 0.3 s); the instructions are kept, keyed by
   the text's hash, for the life of the backend, and the bcc module is released at once.
3. Per case: a fresh records array (mmapable) and a fresh sockmap/sockhash of the case's
   type and size are created with bpf_sys, their fds are patched into the instructions in
   place of the placeholders, and the program is loaded as BPF_PROG_TYPE_SK_MSG.  A load
   costs about 0.1 ms, so cases that share a program text pay the compile once.

bcc is imported lazily, here only: the rest of kernel_runner stays standard library.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Mapping

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import MAX_RUN_RECORDS, RUN_HEAD
from kernel_runner import bpf_sys
from kernel_runner.backend import KernelUnsupported, RawRun
from kernel_runner.c_codegen import (
    PROG_NAME,
    RECORD,
    RECORD_SLOTS,
    RECORDS_FD_PLACEHOLDER,
    SOCK_MAP_FD_PLACEHOLDER,
    bcc_source,
)

AF_INET = 2
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: the first half of a 16-byte instruction
_INSN = struct.Struct("<BBhi")  # code, dst_reg:4 src_reg:4, off, imm
_COUNTER = struct.Struct("<Q")  # struct run_record.runs, at offset 0 of slot 0

# Field positions in RECORD (kernel_runner/c_codegen.FIELDS): runs, 8 u32, 4+4 ip words,
# nsteps, pad, rc[16], win[16].
_MAX_STEPS = 16
_RC = 1 + 8 + 8 + 2
_WIN = _RC + _MAX_STEPS

CACHED_PROGRAMS = 512  # compiled programs kept (a few kB each)
SETUP_HINT = "run scripts/setup.sh as root (it installs python3-bpfcc and links kernel headers for bcc)"


class BccUnavailable(KernelUnsupported):
    """bcc or the kernel headers it compiles against are missing."""


def _bcc_compiler() -> type:
    """bcc.BPF, or KernelUnsupported saying how to get it."""
    try:
        from bcc import BPF  # lazy on purpose: optional, and slow to import (LLVM)
    except ImportError as e:
        raise BccUnavailable(f"the bcc backend needs the bcc Python module (Debian: python3-bpfcc), "
                             f"which does not import here ({e}); {SETUP_HINT}") from None
    release = os.uname().release
    if not (os.path.exists(f"/lib/modules/{release}/build") or os.environ.get("BCC_KERNEL_SOURCE")
            or os.path.exists("/sys/kernel/kheaders.tar.xz")):
        raise BccUnavailable(f"bcc finds no kernel headers for {release} (/lib/modules/{release}/build is missing); "
                             f"{SETUP_HINT}, or run scripts/bcc-headers.sh")
    return BPF


def patch_map_fds(insns: bytes, fds: Mapping[int, int]) -> bytes:
    """The instructions with every map placeholder (an ld_imm64 with src_reg BPF_PSEUDO_MAP_FD
    and a placeholder imm) replaced by the real map fd.  Any other map reference is a bug in
    the generated C (it would name a map this backend does not own): ValueError."""
    out = bytearray(insns)
    i = 0
    while i < len(out):
        code, regs, off, imm = _INSN.unpack_from(out, i)
        if code == _LD_IMM64:
            if regs >> 4 == bpf_sys.BPF_PSEUDO_MAP_FD:
                if imm not in fds:
                    raise ValueError(f"instruction {i // 8} names map fd {imm:#x}, which is no placeholder")
                _INSN.pack_into(out, i, code, regs, off, fds[imm])
            i += 16
        else:
            i += 8
    return bytes(out)


class BccCaseProgram:
    """One case's program, its records array and its (empty) sockmap or sockhash."""

    def __init__(self, prog: bpf_sys.Program, sock_map: bpf_sys.Map, records: bpf_sys.Map) -> None:
        self.prog = prog
        self.sock_map = sock_map
        self.records = records
        self.map_fd = sock_map.fd
        self._mem = records.mmap()
        self._runs: list[RawRun] = []
        self._keys: set[int] = set()  # keys this case inserted: the ones finish() deletes

    def attach(self) -> int:
        return self.prog.attach_rc(self.sock_map.fd, bpf_sys.BPF_SK_MSG_VERDICT)

    def detach(self) -> int:
        return self.prog.detach_rc(self.sock_map.fd, bpf_sys.BPF_SK_MSG_VERDICT)

    def insert(self, key: int, sock_fd: int, flags: int) -> int:
        self._keys.add(key)
        return self.sock_map.update_u32(key, sock_fd, flags)

    def delete(self, key: int) -> int:
        return self.sock_map.delete_u32(key)

    def runs(self) -> tuple[int, list[RawRun]]:
        (count,) = _COUNTER.unpack_from(self._mem, 0)
        for i in range(len(self._runs), min(count, MAX_RUN_RECORDS)):
            self._runs.append(_decode(RECORD.unpack_from(self._mem, (1 + i) * RECORD.size)))
        return count, list(self._runs)

    def finish(self) -> None:
        if self.prog.fd < 0:
            return
        for key in sorted(self._keys):
            self.sock_map.delete_u32(key)  # -ENOENT/-EINVAL for keys already gone: fine
        self.detach()  # -ENOENT when the case detached it itself: fine
        self.prog.close()
        self._mem = b""  # no view of the mapping may outlive it
        self.records.close()
        self.sock_map.close()


def _decode(v: tuple[int, ...]) -> RawRun:
    size_in, win_in, size_out, verdict, family, local_port, remote_port, tid = v[1:9]
    words = 1 if family == AF_INET else 4
    nsteps = min(v[_RC - 2], _MAX_STEPS)
    return RawRun(
        size_in=size_in,
        win_in=win_in,
        rcs=tuple(v[_RC : _RC + nsteps]),
        wins=tuple(v[_WIN : _WIN + nsteps]),
        size_out=size_out,
        verdict=verdict,
        family=family,
        local_ip=struct.pack(f"<{words}I", *v[9 : 9 + words]),  # stored as loaded: network byte order
        local_port=local_port,
        remote_ip=struct.pack(f"<{words}I", *v[13 : 13 + words]),
        remote_port=remote_port,
        tid=tid,
        head=v[-1][: min(win_in, RUN_HEAD)],
    )


class BccBackend:
    """Backend: bcc-compiled per-case C.  Compiles (0.35-0.4 s each) are cached by source hash,
    the most recently used CACHED_PROGRAMS of them: a day-long campaign confirms thousands of
    distinct programs, and the minimizer re-runs the same few many times."""

    name = "bcc"

    def __init__(self) -> None:
        self._bpf: type | None = None
        self._insns: OrderedDict[str, bytes] = OrderedDict()  # sha256 of the source -> instructions
        self._live: list[BccCaseProgram] = []
        self.compiles = 0
        self.compile_seconds = 0.0

    def source(self, case: Case) -> str:
        """The C this backend compiles for the case (a readable reproducer of its program)."""
        return bcc_source(case)

    def instructions(self, source: str) -> bytes:
        """The compiled program for this source, from the cache or bcc."""
        key = hashlib.sha256(source.encode()).hexdigest()
        insns = self._insns.get(key)
        if insns is None:
            insns = self._compile(source)
            self._insns[key] = insns
            if len(self._insns) > CACHED_PROGRAMS:
                self._insns.popitem(last=False)
        else:
            self._insns.move_to_end(key)
        return insns

    def _compile(self, source: str) -> bytes:
        if self._bpf is None:
            self._bpf = _bcc_compiler()
        start = time.perf_counter()
        try:
            module = self._bpf(text=source.encode())
        except Exception as e:  # bcc raises a bare Exception; clang's messages went to stderr
            raise RuntimeError(f"bcc could not compile the generated program ({e}); clang's errors are on "
                               f"stderr, the source is BccBackend.source(case)") from None
        try:
            insns = module.dump_func(PROG_NAME.encode())
        finally:
            module.cleanup()
        self.compiles += 1
        self.compile_seconds += time.perf_counter() - start
        return bytes(insns)

    def prepare(self, case: Case) -> BccCaseProgram:
        insns = self.instructions(bcc_source(case))
        self._live = [p for p in self._live if p.prog.fd >= 0]
        map_type = bpf_sys.BPF_MAP_TYPE_SOCKHASH if case.map.type == "sockhash" else bpf_sys.BPF_MAP_TYPE_SOCKMAP
        try:
            records = bpf_sys.map_create(bpf_sys.BPF_MAP_TYPE_ARRAY, 4, RECORD.size, RECORD_SLOTS,
                                         bpf_sys.BPF_F_MMAPABLE, "dfz_records")
        except OSError as e:
            raise KernelUnsupported(f"cannot create a BPF array map ({e.strerror}); run as root") from None
        try:
            sock_map = bpf_sys.map_create(map_type, 4, 4, case.map.size, 0, f"dfz_{case.map.type}")
        except OSError as e:
            records.close()
            raise KernelUnsupported(f"cannot create a {case.map.type} of {case.map.size} entries "
                                    f"({e.strerror}): kernel without CONFIG_BPF_STREAM_PARSER/sockmap?") from None
        try:
            code = patch_map_fds(insns, {RECORDS_FD_PLACEHOLDER: records.fd, SOCK_MAP_FD_PLACEHOLDER: sock_map.fd})
            prog = bpf_sys.prog_load(bpf_sys.BPF_PROG_TYPE_SK_MSG, code, "GPL", name=PROG_NAME)
        except BaseException:
            records.close()
            sock_map.close()
            raise
        program = BccCaseProgram(prog, sock_map, records)
        self._live.append(program)
        return program

    def close(self) -> None:
        for program in self._live:
            program.finish()
        self._live.clear()
        self._insns.clear()
