"""The interpreter's two shared-memory layouts: the script a case writes, the records it reads.

bpf/interp.bpf.c mirrors every struct here (same names, same field order); change both
together.  All integers are little-endian (x86_64 and the BPF target agree), every struct
is naturally aligned with explicit padding, so C and Python agree on offsets without
packing attributes.

script map (ARRAY, BPF_F_MMAPABLE, one value):

    struct step        { u32 op; u32 n; u64 a; u64 b; u64 c; u8 data[16]; }      48 bytes
    struct invocation  { u32 nsteps; u32 verdict_kind; u32 verdict; u32 pad;
                         struct step steps[MAX_STEPS]; }                           784 bytes
    struct script      { u32 nprogs; u32 map_kind; u32 pad[2];
                         struct invocation progs[MAX_PROGRAMS]; }

  step fields by op (raw values, passed to the helper in 64-bit registers unchanged):
    OP_APPLY / OP_CORK    a = bytes
    OP_PULL               a = start, b = end, c = flags
    OP_PUSH / OP_POP      a = start, b = len, c = flags
    OP_REDIRECT           a = key, b = flags  (helper chosen by script.map_kind)
    OP_WRITE              a = offset, n = length (1..16), data = the bytes

records map (ARRAY, BPF_F_MMAPABLE, one value):

    struct run_rec { u32 size_in, win_in, size_out, verdict;
                     u32 nsteps (steps executed), family, local_port, remote_port;
                     u8 local_ip4[4], remote_ip4[4]; u32 tid, pad;
                     u8 local_ip6[16], remote_ip6[16];
                     s64 rc[MAX_STEPS]; u32 win[MAX_STEPS]; }                    272 bytes
    struct records { u64 count; u64 pad; struct run_rec runs[2 * MAX_RUN_RECORDS]; }

  `count` counts every run (atomic add); run i is recorded in runs[i] for i < 64.  Every later
  run writes one of the scratch slots runs[64..127], which nobody reads: the program computes
  the slot without a branch, so the verifier checks one code path instead of two.

The write step has one limit of its own: the verifier bounds a variable packet offset by
MAX_PACKET_OFF (0xffff), so a store whose offset is above WRITE_MAX_OFFSET (0xffef) cannot be
expressed.  Such a step is skipped with rc -1, like a store outside the window: the rule
docs/execution.md states for every backend and the model.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Sequence

from diffuzz.contract.case import (
    LAST_RC,
    MAX_PROGRAMS,
    MAX_STEPS,
    MAX_WRITE,
    ApplyBytes,
    CorkBytes,
    Invocation,
    PopData,
    PullData,
    PushData,
    Redirect,
    Step,
    Write,
)
from diffuzz.contract.outcome import MAX_RUN_RECORDS
from diffuzz.contract.outcome import RUN_HEAD as RUN_HEAD_LEN
from kernel_runner.backend import RawRun

# enum op in interp.bpf.c
OP_APPLY = 1
OP_CORK = 2
OP_PULL = 3
OP_PUSH = 4
OP_POP = 5
OP_WRITE = 6
OP_REDIRECT = 7

VERDICT_CONST = 0
VERDICT_LAST_RC = 1

MAP_KIND_SOCKMAP = 0
MAP_KIND_SOCKHASH = 1

WRITE_MAX_OFFSET = 0xFFEF

STEP = struct.Struct("<IIQQQ16s")
INVOCATION_HEAD = struct.Struct("<IIII")
SCRIPT_HEAD = struct.Struct("<IIII")
INVOCATION_SIZE = INVOCATION_HEAD.size + MAX_STEPS * STEP.size
SCRIPT_SIZE = SCRIPT_HEAD.size + MAX_PROGRAMS * INVOCATION_SIZE

RUN_HEAD = struct.Struct("<IIIIIIII4s4sII16s16s")
RUN_RC = struct.Struct(f"<{MAX_STEPS}q")
RUN_WIN = struct.Struct(f"<{MAX_STEPS}I")
RUN_BYTES = struct.Struct(f"<{RUN_HEAD_LEN}s")  # head[]: the window's first bytes on entry
RUN_REC_SIZE = RUN_HEAD.size + RUN_RC.size + RUN_WIN.size + RUN_BYTES.size
RECORDS_HEAD = struct.Struct("<QQ")
RECORDS_SIZE = RECORDS_HEAD.size + 2 * MAX_RUN_RECORDS * RUN_REC_SIZE

assert (STEP.size, INVOCATION_SIZE, RUN_REC_SIZE) == (48, 784, 288), "layout drifted from interp.bpf.c"


U64 = (1 << 64) - 1


def _encode_step(step: Step, buf: bytearray, offset: int) -> None:
    if isinstance(step, ApplyBytes):
        STEP.pack_into(buf, offset, OP_APPLY, 0, step.bytes, 0, 0, b"")
    elif isinstance(step, CorkBytes):
        STEP.pack_into(buf, offset, OP_CORK, 0, step.bytes, 0, 0, b"")
    elif isinstance(step, PullData):
        STEP.pack_into(buf, offset, OP_PULL, 0, step.start, step.end, step.flags, b"")
    elif isinstance(step, PushData):
        STEP.pack_into(buf, offset, OP_PUSH, 0, step.start, step.len, step.flags, b"")
    elif isinstance(step, PopData):
        STEP.pack_into(buf, offset, OP_POP, 0, step.start, step.len, step.flags, b"")
    elif isinstance(step, Write):
        if not 1 <= len(step.data) <= MAX_WRITE:
            raise ValueError(f"write step holds {len(step.data)} bytes, the interpreter takes 1..{MAX_WRITE}")
        STEP.pack_into(buf, offset, OP_WRITE, len(step.data), step.offset, 0, 0, step.data)
    elif isinstance(step, Redirect):
        STEP.pack_into(buf, offset, OP_REDIRECT, 0, step.key, step.flags, 0, b"")
    else:
        raise TypeError(f"unknown step {step!r}")


@functools.lru_cache(maxsize=512)
def encode_script(program: tuple[Invocation, ...], map_kind: int) -> bytes:
    """The struct script bytes for a case's program, up to the last used invocation (the rest of
    the map value is never read: the program clamps its index to nprogs - 1).

    Cached: the minimizer and confirmation re-run the same programs many times.
    """
    if not 1 <= len(program) <= MAX_PROGRAMS:
        raise ValueError(f"program has {len(program)} step lists, the interpreter takes 1..{MAX_PROGRAMS}")
    buf = bytearray(SCRIPT_HEAD.size + len(program) * INVOCATION_SIZE)
    SCRIPT_HEAD.pack_into(buf, 0, len(program), map_kind, 0, 0)
    for i, inv in enumerate(program):
        base = SCRIPT_HEAD.size + i * INVOCATION_SIZE
        if len(inv.steps) > MAX_STEPS:
            raise ValueError(f"program[{i}] has {len(inv.steps)} steps, the interpreter takes at most {MAX_STEPS}")
        if inv.verdict == LAST_RC:
            kind, value = VERDICT_LAST_RC, 0
        elif isinstance(inv.verdict, int) and 0 <= inv.verdict <= 0xFFFF_FFFF:
            kind, value = VERDICT_CONST, inv.verdict
        else:
            raise ValueError(f"program[{i}].verdict {inv.verdict!r} is not a u32 or {LAST_RC}")
        INVOCATION_HEAD.pack_into(buf, base, len(inv.steps), kind, value, 0)
        for j, step in enumerate(inv.steps):
            _encode_step(step, buf, base + INVOCATION_HEAD.size + j * STEP.size)
    return bytes(buf)


_RUN_ALL = struct.Struct(RUN_HEAD.format + RUN_RC.format[1:] + RUN_WIN.format[1:] + RUN_BYTES.format[1:])
_RC0 = 14  # index of rc[0] in a _RUN_ALL tuple


def decode_runs(records: Sequence[int] | bytes | memoryview, count: int, start: int = 0) -> list[RawRun]:
    """RawRun for each recorded run from slot `start` on: up to slot min(count, MAX_RUN_RECORDS)."""
    out = []
    unpack = _RUN_ALL.unpack_from
    for i in range(start, min(count, MAX_RUN_RECORDS)):
        f = unpack(records, RECORDS_HEAD.size + i * RUN_REC_SIZE)
        n = min(f[4], MAX_STEPS)
        v6 = f[5] == socket.AF_INET6
        out.append(RawRun(size_in=f[0], win_in=f[1], rcs=f[_RC0 : _RC0 + n],
                          wins=f[_RC0 + MAX_STEPS : _RC0 + MAX_STEPS + n], size_out=f[2], verdict=f[3], family=f[5],
                          local_ip=f[12] if v6 else f[8], local_port=f[6],
                          remote_ip=f[13] if v6 else f[9], remote_port=f[7], tid=f[10],
                          head=f[-1][: min(f[1], RUN_HEAD_LEN)]))
    return out


def record_count(records: Sequence[int] | bytes | memoryview) -> int:
    """The run counter: every run of the program since the records were zeroed."""
    return RECORDS_HEAD.unpack_from(records, 0)[0]
