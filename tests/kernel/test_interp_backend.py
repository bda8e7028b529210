"""The interpreter backend end to end: loopback TCP pairs in a sockmap/sockhash with the
interpreter attached, scripts for the spec's worked examples, checked through the records.

Every test body runs in a forked child inside its own network namespace (`in_netns`), so the
host's network is never touched.  The sends here are plain socket calls: the executor is
tested elsewhere; this checks what the program sees and does.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from diffuzz.contract.case import (
    LAST_RC,
    SK_DROP,
    SK_PASS,
    ApplyBytes,
    Case,
    CorkBytes,
    Invocation,
    MapSpec,
    PopData,
    PullData,
    PushData,
    Redirect,
    Write,
)
from kernel_runner import bpf_sys, script
from kernel_runner.backend import RawRun
from kernel_runner.interp_backend import InterpBackend, find_object
from tests.kernel.netns_child import in_netns, require_bpf

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _bpf_available() -> None:
    require_bpf()


def tcp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    addr = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as lst:
        lst.bind((addr, 0))
        lst.listen(1)
        c = socket.create_connection(lst.getsockname()[:2])
        p, _ = lst.accept()
    for s in (c, p):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # close with RST: no TIME_WAIT left behind
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return c, p


def send(sock: socket.socket, data: bytes) -> int | str:
    try:
        return sock.send(data, socket.MSG_DONTWAIT)
    except OSError as e:
        return errno.errorcode[e.errno]


def drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def shape(runs: list[RawRun]) -> list[tuple[int, int]]:
    """(size_in, win_in) per run, the spec's notation for runs."""
    return [(r.size_in, r.win_in) for r in runs]


AB = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def run_case(case: Case, body: Callable[[list[socket.socket], Any], Any], *, keys: tuple[int, ...] = (0, 1),
             family: int = socket.AF_INET, pairs: int = 1) -> Any:
    """Set up `pairs` pairs, put c0, p0, c1, p1, ... under `keys`, attach before insert (as
    docs/execution.md), run body(sockets, case_program) and finish; returns body's result."""
    with InterpBackend() as backend:
        prog = backend.prepare(case)
        socks: list[socket.socket] = []
        for _ in range(pairs):
            socks.extend(tcp_pair(family))
        try:
            assert prog.attach() == 0
            for key, sock in zip(keys, socks, strict=False):
                assert prog.insert(key, sock.fileno(), bpf_sys.BPF_ANY) == 0
            return body(socks, prog)
        finally:
            prog.finish()
            for s in socks:
                s.close()


# --------------------------------------------------------------------------------------
# The spec's worked examples (§12)


def test_w1_plain_pass() -> None:
    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        sent = send(c0, AB[:10])
        count, runs = prog.runs()
        return sent, drain(p0), count, runs, c0.getsockname(), p0.getsockname(), threading.get_native_id()

    sent, rx, count, runs, c_addr, p_addr, tid = in_netns(lambda: run_case(Case(), body))
    assert (sent, rx, count) == (10, AB[:10], 1)
    (run,) = runs
    assert (run.size_in, run.win_in, run.rcs, run.wins, run.size_out, run.verdict) == (10, 10, (), (), 10, SK_PASS)
    assert run.family == socket.AF_INET
    assert run.local_ip == run.remote_ip == socket.inet_aton("127.0.0.1")
    assert run.local_port == c_addr[1]  # host order (UAPI)
    # network order in the upper half of the u32: sk_msg_convert_ctx_access loads skc_dport
    # and shifts it left by 16 on little-endian
    assert run.remote_port == socket.htons(p_addr[1]) << 16
    assert run.tid == tid


def test_w2_apply_bytes_one_runs_ten_times() -> None:
    case = Case(program=(Invocation(steps=(ApplyBytes(1),)),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        return send(c0, AB[:10]), drain(p0), prog.runs()

    sent, rx, (count, runs) = in_netns(lambda: run_case(case, body))
    assert (sent, rx, count) == (10, AB[:10], 10)
    assert shape(runs) == [(n, n) for n in range(10, 0, -1)]
    assert all(r.rcs == (0,) and r.verdict == SK_PASS for r in runs)


def test_w3_sticky_drop() -> None:
    case = Case(program=(Invocation(verdict=SK_DROP), Invocation(verdict=SK_PASS)))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        return [send(c0, AB[:10]), send(c0, AB[:10]), send(c0, AB[:5])], drain(p0), prog.runs()

    sends, rx, (count, runs) = in_netns(lambda: run_case(case, body))
    assert sends == ["EACCES", "EACCES", "EACCES"]
    assert (rx, count) == (b"", 1)
    assert runs[0].verdict == SK_DROP


def test_w7_cork() -> None:
    case = Case(program=(Invocation(steps=(CorkBytes(10),)),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        first = [send(c0, AB[0:4]), send(c0, AB[4:8])]
        held = drain(p0)
        first.append(send(c0, AB[8:12]))
        return first, held, drain(p0), prog.runs()

    sends, held, rx, (count, runs) = in_netns(lambda: run_case(case, body))
    assert sends == [4, 4, 4]
    assert held == b""
    assert rx == AB[:12]
    assert count == 2
    assert [(r.size_in, r.rcs) for r in runs] == [(4, (0,)), (12, (0,))]
    assert runs[0].win_in == 4


# --------------------------------------------------------------------------------------
# The other steps and verdicts


def test_pull_then_write_changes_delivered_bytes() -> None:
    case = Case(program=(Invocation(steps=(PullData(2, 6), Write(1, b"zz"), Write(3, b"!!"), Write(0, b"#"))),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        return send(c0, AB[:10]), drain(p0), prog.runs()

    sent, rx, (_count, runs) = in_netns(lambda: run_case(case, body))
    # window after pull(2, 6) is "CDEF"; a 2-byte store at offset 3 does not fit
    assert runs[0].rcs == (0, 0, -1, 0)
    assert runs[0].wins == (4, 4, 4, 4)
    assert (sent, rx) == (10, b"AB#zzFGHIJ")


def test_helper_errors_are_recorded_as_s64_and_last_rc_is_u32() -> None:
    case = Case(program=(Invocation(steps=(PushData(0, 4, flags=1), PopData(0, 1 << 40), PullData(5, 5)),
                                    verdict=LAST_RC),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        return send(c0, AB[:10]), drain(p0), prog.runs()

    sent, rx, (_count, runs) = in_netns(lambda: run_case(case, body))
    # pop(0, 2^40): the helper's u32 len truncates to 0 -> a no-op returning 0
    assert runs[0].rcs == (-errno.EINVAL, 0, -errno.EINVAL)
    assert runs[0].verdict == 2**32 - errno.EINVAL
    assert (sent, rx) == ("EACCES", b"")


def test_push_and_pop_change_size() -> None:
    case = Case(program=(Invocation(steps=(PushData(0, 4), PopData(2, 5))),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        return send(c0, AB[:10]), drain(p0), prog.runs()

    sent, rx, (_count, runs) = in_netns(lambda: run_case(case, body))
    # spec §6.7: push(0,4) then pop(2,5) removes 2 pushed bytes and the first 3 original ones
    assert (runs[0].size_in, runs[0].size_out, runs[0].rcs) == (10, 9, (0, 0))
    assert sent == 10
    assert len(rx) == 9 and rx[2:] == AB[3:10]


@pytest.mark.parametrize("map_type", ["sockmap", "sockhash"])
def test_redirect_egress_to_another_pair(map_type: str) -> None:
    # keys: c0 -> 0, p0 -> 1, c1 -> 2, p1 -> 0xabcd (a sockhash takes any u32 key)
    last = 0xABCD if map_type == "sockhash" else 3
    case = Case(pairs=2, map=MapSpec(type=map_type, size=4),
                program=(Invocation(steps=(Redirect(last if map_type == "sockhash" else 2),), verdict=LAST_RC),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0, c1, p1 = socks
        return send(c0, AB[:10]), drain(p0), drain(c1), drain(p1), prog.runs()

    sent, rx_p0, rx_c1, rx_p1, (_count, runs) = in_netns(
        lambda: run_case(case, body, keys=(0, 1, 2, last), pairs=2))
    assert runs[0].rcs == (SK_PASS,)
    assert sent == 10 and rx_p0 == b""
    if map_type == "sockmap":  # key 2 = c1, egress: c1 sends, p1 reads
        assert (rx_c1, rx_p1) == (b"", AB[:10])
    else:  # key 0xabcd = p1, egress: p1 sends, c1 reads
        assert (rx_c1, rx_p1) == (AB[:10], b"")


def test_redirect_miss_returns_sk_drop() -> None:
    case = Case(map=MapSpec(size=2), program=(Invocation(steps=(Redirect(7), Redirect(1, flags=2)),
                                                         verdict=LAST_RC),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, _p0 = socks
        return send(c0, AB[:10]), prog.runs()

    sent, (_count, runs) = in_netns(lambda: run_case(case, body))
    assert runs[0].rcs == (SK_DROP, SK_DROP)  # key beyond max_entries; flags other than BPF_F_INGRESS
    assert sent == "EACCES"


def test_ipv6_context() -> None:
    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        send(c0, AB[:3])
        return prog.runs()[1][0], c0.getsockname(), p0.getsockname()

    run, c_addr, p_addr = in_netns(lambda: run_case(Case(family="ipv6"), body, family=socket.AF_INET6))
    assert run.family == socket.AF_INET6
    assert run.local_ip == run.remote_ip == socket.inet_pton(socket.AF_INET6, "::1")
    assert (run.local_port, run.remote_port) == (c_addr[1], socket.htons(p_addr[1]) << 16)


def test_runs_after_64_are_counted_not_recorded() -> None:
    case = Case(program=(Invocation(steps=(ApplyBytes(1),)),))

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        send(c0, bytes(100))
        drain(p0)
        return prog.runs()

    count, runs = in_netns(lambda: run_case(case, body))
    assert count == 100
    assert shape(runs) == [(n, n) for n in range(100, 36, -1)]


def test_step_list_index_is_clamped_to_the_last() -> None:
    program = tuple(Invocation(steps=(ApplyBytes(1),) * (i + 1)) for i in range(3))
    case = Case(program=program)

    def body(socks: list[socket.socket], prog: Any) -> Any:
        c0, p0 = socks
        send(c0, AB[:5])
        drain(p0)
        return prog.runs()

    count, runs = in_netns(lambda: run_case(case, body))
    assert count == 5
    assert [len(r.rcs) for r in runs] == [1, 2, 3, 3, 3]


# --------------------------------------------------------------------------------------
# Lifecycle


def test_finish_empties_the_map_and_detaches() -> None:
    def body() -> Any:
        with InterpBackend() as backend:
            c, p = tcp_pair()
            prog = backend.prepare(Case(map=MapSpec(type="sockhash", size=4)))
            results = [prog.attach(), prog.insert(5, c.fileno(), 0), prog.insert(6, p.fileno(), 0)]
            prog.finish()
            results += [prog.delete(5), prog.delete(6), prog.detach()]
            # the next case on the same instance starts empty, with a zeroed counter
            prog2 = backend.prepare(Case(map=MapSpec(type="sockhash", size=4)))
            results += [prog2.map_fd == prog.map_fd, prog2.runs()[0]]
            prog2.finish()
            c.close()
            p.close()
            return results

    assert in_netns(body) == [0, 0, 0, -errno.ENOENT, -errno.ENOENT, -errno.ENOENT, True, 0]


def test_no_fd_leak_over_many_cases() -> None:
    def body() -> tuple[int, int]:
        def fds() -> int:
            return len(os.listdir("/proc/self/fd"))

        with InterpBackend() as warm:  # imports and first-use allocations happen here
            warm.prepare(Case()).finish()
        before = fds()
        c, p = tcp_pair()
        with InterpBackend(max_instances=2) as backend:
            for i in range(1000):
                size = 1 + i % 3 if i < 30 else 4  # evicts and reloads while i < 30
                mtype = "sockmap" if i % 2 else "sockhash"
                prog = backend.prepare(Case(map=MapSpec(type=mtype, size=size)))
                prog.attach()
                prog.insert(0, c.fileno(), 0)
                prog.finish()
        c.close()
        p.close()
        return before, fds()

    before, after = in_netns(body)
    assert after == before


def test_find_object_is_loadable() -> None:
    path = find_object()
    with InterpBackend(path) as backend:
        assert backend.prepare(Case()).runs() == (0, [])


def test_script_layout_matches_the_object() -> None:
    from kernel_runner.elf_loader import BpfObject

    obj = BpfObject.open(str(find_object()))
    assert obj.maps["script"].value_size == script.SCRIPT_SIZE
    assert obj.maps["records"].value_size == script.RECORDS_SIZE
