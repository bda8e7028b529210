"""The bcc confirmation backend on the real kernel: generated C compiles, loads and records
exactly what the spec's worked examples say (spec §12 W1, W2, W3, W7).

Cases run through kernel_runner.pool (a worker process in its own network namespace);
the load-only tests create maps and programs in this process but touch no socket.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffuzz.contract.case import (
    LAST_RC,
    SK_DROP,
    SK_PASS,
    U32,
    U64,
    ApplyBytes,
    Case,
    CorkBytes,
    Fionread,
    Invocation,
    MapEntry,
    MapSpec,
    PopData,
    PullData,
    PushData,
    Redirect,
    Send,
    Write,
)
from diffuzz.contract.outcome import Data, Outcome, Run, RunContext, StepRecord
from kernel_runner import bcc_backend, bpf_sys
from kernel_runner.bcc_backend import BccBackend, patch_map_fds
from kernel_runner.c_codegen import (
    RECORDS_FD_PLACEHOLDER,
    SOCK_MAP_FD_PLACEHOLDER,
    bcc_source,
    libbpf_source,
)
from kernel_runner.pool import KernelPool, is_error

pytestmark = pytest.mark.kernel

AF_INET = 2
# Spec §12 set-up: two pairs, all four sockets in one sockmap (0 = c0, 1 = p0, 2 = c1, 3 = p1).
SPEC_INSERTS = tuple(MapEntry(k, ep) for k, ep in enumerate(("c0", "p0", "c1", "p1")))

# Every step kind, with the boundary arguments the generator produces (u64 registers, a write
# at the verifier's packet-offset limit and past it), and every kind of verdict.
EVERY_STEP = (
    Invocation((ApplyBytes(1), CorkBytes(U64), PullData(0, 4), Write(0, b"\x00\xff")), SK_PASS),
    Invocation((PushData(2, 4096), PopData(U32, 1 << 32, 1), Redirect(3, 1), Redirect(U32, 2)), LAST_RC),
    Invocation((Write(0xFFFF - 16, bytes(16)), Write(0xFFFF, b"z"), PullData(U64, U64)), 2),
    Invocation((), U32),
    Invocation((), SK_DROP),
)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_BPF, CAP_NET_ADMIN) to load programs and unshare a network namespace")


@pytest.fixture(scope="module")
def pool() -> Iterator[KernelPool]:
    _require_root()
    with KernelPool(jobs=1, backend="bcc", deadline=60.0) as p:
        yield p


@pytest.fixture
def backend() -> Iterator[BccBackend]:
    _require_root()
    be = BccBackend()
    yield be
    be.close()


def _run(pool: KernelPool, case: Case) -> Outcome:
    out = pool.run(case)
    assert not is_error(out), out.notes
    assert out.notes.get("backend", "bcc") == "bcc"
    return out


def _ctx(task: int) -> RunContext:
    return RunContext(family=AF_INET, local="c0", remote="p0", task=task)


def _spec_case(program: tuple[Invocation, ...], *events: Send | Fionread) -> Case:
    return Case(pairs=2, inserts=SPEC_INSERTS, program=program, events=events)


# --------------------------------------------------------------------------------------
# Compile and load (no sockets)


@pytest.mark.parametrize("map_type", ["sockmap", "sockhash"])
def test_every_step_kind_compiles_and_loads(backend: BccBackend, map_type: str) -> None:
    case = Case(map=MapSpec(map_type, 4), program=EVERY_STEP)
    prog = backend.prepare(case)
    try:
        assert prog.attach() == 0
        assert prog.runs() == (0, [])
        assert prog.detach() == 0
        assert prog.detach() < 0  # nothing attached any more
    finally:
        prog.finish()
    assert backend.compiles == 1


def test_same_program_text_compiles_once(backend: BccBackend) -> None:
    program = (Invocation((ApplyBytes(7),), SK_PASS),)
    first = Case(name="a", map=MapSpec("sockmap", 4), program=program)
    second = Case(name="b", map=MapSpec("sockmap", 64), program=program, family="ipv6")
    other_map_type = Case(map=MapSpec("sockhash", 4), program=program)  # redirect_hash instead: another text
    assert bcc_source(first) == bcc_source(second) != bcc_source(other_map_type)
    for case in (first, second, first):
        p = backend.prepare(case)
        assert p.sock_map.max_entries == case.map.size  # a fresh map of the case's size each time
        p.finish()
    assert backend.compiles == 1
    backend.prepare(other_map_type).finish()
    assert backend.compiles == 2


def test_compile_cache_keeps_the_most_recently_used(backend: BccBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bcc_backend, "CACHED_PROGRAMS", 2)
    a, b, c = (Case(map=MapSpec("sockmap", 4), program=(Invocation((ApplyBytes(n),), SK_PASS),)) for n in (1, 2, 3))
    for case in (a, b, a, c):  # c evicts b (a was used after b)
        backend.prepare(case).finish()
    assert backend.compiles == 3
    backend.prepare(a).finish()
    assert backend.compiles == 3  # still cached
    backend.prepare(b).finish()
    assert backend.compiles == 4  # compiled again


def test_patch_map_fds_replaces_placeholders_and_rejects_other_maps() -> None:
    def ld_map(imm: int) -> bytes:  # ld_imm64 r1, map fd imm: two 8-byte halves
        return struct.pack("<BBhi", 0x18, 0x01 | bpf_sys.BPF_PSEUDO_MAP_FD << 4, 0, imm) + bytes(8)

    exit_insn = struct.pack("<BBhi", 0x95, 0, 0, 0)
    code = ld_map(RECORDS_FD_PLACEHOLDER) + ld_map(SOCK_MAP_FD_PLACEHOLDER) + exit_insn
    patched = patch_map_fds(code, {RECORDS_FD_PLACEHOLDER: 5, SOCK_MAP_FD_PLACEHOLDER: 6})
    assert patched == ld_map(5) + ld_map(6) + exit_insn
    with pytest.raises(ValueError, match="no placeholder"):
        patch_map_fds(ld_map(7), {RECORDS_FD_PLACEHOLDER: 5})


def test_libbpf_reproducer_builds_and_loads(tmp_path: Path) -> None:
    """The standalone .bpf.c of a finding compiles with clang and passes the verifier."""
    _require_root()
    from kernel_runner.elf_loader import BpfObject

    case = Case(name="every step", map=MapSpec("sockhash", 8), program=EVERY_STEP)
    src = tmp_path / "repro.bpf.c"
    src.write_text(libbpf_source(case))
    obj = tmp_path / "repro.bpf.o"
    clang = shutil.which("clang") or shutil.which("clang-14")
    assert clang, "clang is part of the project's set-up (scripts/setup.sh)"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True)
    with BpfObject.open(str(obj)).load() as loaded:
        assert loaded.maps["sock_map"].map_type == bpf_sys.BPF_MAP_TYPE_SOCKHASH
        assert loaded.maps["sock_map"].max_entries == 8
        assert loaded.program.fd >= 0


# --------------------------------------------------------------------------------------
# Spec §12 worked examples, exact


def test_w1_plain_pass(pool: KernelPool) -> None:
    out = _run(pool, _spec_case((Invocation((), SK_PASS),), Send("c0", 10)))
    assert [e.ret for e in out.events] == [10]
    assert out.runs == (Run("c0", 10, 10, (), 10, SK_PASS, _ctx(0), Data(b"ABCDEFGHIJ")),)
    assert out.run_count == 1
    assert out.endpoints["p0"].rx == Data(b"ABCDEFGHIJ")


def test_w2_apply_one_byte_per_run(pool: KernelPool) -> None:
    out = _run(pool, _spec_case((Invocation((ApplyBytes(1),), SK_PASS),), Send("c0", 10)))
    assert [e.ret for e in out.events] == [10]
    assert out.runs == tuple(
        Run("c0", n, n, (StepRecord(0, n),), n, SK_PASS, _ctx(0), Data(b"ABCDEFGHIJ"[10 - n:]))
        for n in range(10, 0, -1)
    )
    assert out.run_count == 10
    assert out.endpoints["p0"].rx == Data(b"ABCDEFGHIJ")


def test_w3_sticky_drop(pool: KernelPool) -> None:
    program = (Invocation((), SK_DROP), Invocation((), SK_PASS))
    out = _run(pool, _spec_case(program, Send("c0", 10), Send("c0", 10), Send("c0", 5)))
    assert [e.ret for e in out.events] == ["EACCES", "EACCES", "EACCES"]
    assert out.runs == (Run("c0", 10, 10, (), 10, SK_DROP, _ctx(0), Data(b"ABCDEFGHIJ")),)
    assert out.run_count == 1
    assert out.endpoints["p0"].rx == Data(b"")


def test_w7_cork(pool: KernelPool) -> None:
    program = (Invocation((CorkBytes(10),), SK_PASS),)
    out = _run(pool, _spec_case(program, Send("c0", 4), Send("c0", 4), Fionread("p0"), Send("c0", 4)))
    assert [e.ret for e in out.events] == [4, 4, 0, 4]
    # Run 1 sees the whole corked message; with a fresh thread per send each send is its own
    # element, so the window is the first send's 4 bytes (spec §2.2).
    assert out.runs == (
        Run("c0", 4, 4, (StepRecord(0, 4),), 4, SK_PASS, _ctx(0), Data(b"ABCD")),
        Run("c0", 12, 4, (StepRecord(0, 4),), 12, SK_PASS, _ctx(3), Data(b"ABCD")),
    )
    assert out.run_count == 2
    assert out.endpoints["p0"].rx == Data(b"ABCDEFGHIJKL")
