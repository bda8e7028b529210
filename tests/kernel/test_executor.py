"""The kernel side of docs/execution.md, through the full path (pool -> worker -> executor -> interp backend).

Every expectation here was measured on Linux 6.18 and matches the spec's worked examples (spec §12).
The worker runs in its own network namespace; nothing touches the host's network.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffuzz.contract.case import (
    BPF_F_INGRESS,
    SK_DROP,
    SK_PASS,
    ApplyBytes,
    Attach,
    Case,
    Close,
    CorkBytes,
    Detach,
    Event,
    Fionread,
    Invocation,
    MapDelete,
    MapEntry,
    MapInsert,
    MapSpec,
    PushData,
    Recv,
    Redirect,
    Send,
    SendFile,
    SendMsg,
    Shutdown,
    SockOpt,
    Splice,
    load_case,
)
from diffuzz.contract.outcome import Data, Endpoint, EventResult, Outcome, Run, RunContext, StepRecord
from kernel_runner.backend import RawRun
from kernel_runner.pool import KernelPool, is_error
from kernel_runner.records import endpoint_name, remote_port_host, to_run
from kernel_runner.topology import Topology

EVIDENCE = Path(__file__).resolve().parents[2] / "docs" / "evidence"
ABC = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
AF_INET, AF_INET6 = 2, 10

kernel = pytest.mark.kernel(needs=("interp",))


@pytest.fixture(scope="module")
def pool() -> Iterator[KernelPool]:
    with KernelPool(jobs=1, backend="interp", deadline=10.0) as p:
        yield p


def spec_case(program: tuple[Invocation, ...], events: tuple[Event, ...], **kw: object) -> Case:
    """The set-up of spec §12: pairs c0-p0 and c1-p1, all four in a sockmap, keys 0..3 = c0, p0, c1, p1."""
    return Case(pairs=2, inserts=tuple(MapEntry(k, ep) for k, ep in enumerate(("c0", "p0", "c1", "p1"))),
                program=program, events=events, **kw)  # type: ignore[arg-type]


def run_ok(pool: KernelPool, case: Case) -> Outcome:
    out = pool.run(case)
    assert not is_error(out), out.notes
    assert not out.hang, out.notes
    assert out.side == "kernel"
    return out


def ctx(task: int, local: str = "c0", remote: str = "p0", family: int = AF_INET) -> RunContext:
    return RunContext(family=family, local=local, remote=remote, task=task)


# ---- spec worked examples, exact records -----------------------------------------------------------


@kernel
def test_w1_plain_pass(pool: KernelPool) -> None:
    out = run_ok(pool, spec_case((Invocation(),), (Send("c0", 10),)))
    assert out.inserts == (0, 0, 0, 0)
    assert out.events == (EventResult(ret=10),)
    # head: the window's first bytes as the program read them (invariants.py program_view).
    assert out.runs == (Run(ep="c0", size_in=10, win_in=10, steps=(), size_out=10, verdict=SK_PASS, ctx=ctx(0),
                            head=Data(ABC[:10])),)
    assert out.run_count == 1
    assert out.endpoints["p0"] == Endpoint(rx=Data(ABC[:10]), fionread=0, end="EAGAIN")
    for ep in ("c0", "c1", "p1"):
        assert out.endpoints[ep] == Endpoint(rx=Data(b""), fionread=0, end="EAGAIN")


@kernel
def test_w2_apply_bytes_1_runs_once_per_byte(pool: KernelPool) -> None:
    out = run_ok(pool, spec_case((Invocation((ApplyBytes(1),)),), (Send("c0", 10),)))
    assert out.events == (EventResult(ret=10),)
    assert out.run_count == 10
    assert out.runs == tuple(
        Run(ep="c0", size_in=n, win_in=n, steps=(StepRecord(rc=0, win=n),), size_out=n, verdict=SK_PASS, ctx=ctx(0),
            head=Data(ABC[10 - n:10]))  # each re-run's window starts at the first byte not yet sent
        for n in range(10, 0, -1)
    )
    assert out.endpoints["p0"].rx == Data(ABC[:10])


@kernel
def test_w3_sticky_drop(pool: KernelPool) -> None:
    program = (Invocation(verdict=SK_DROP), Invocation(verdict=SK_PASS))
    out = run_ok(pool, spec_case(program, (Send("c0", 10), Send("c0", 10), Send("c0", 5))))
    assert out.events == (EventResult(ret="EACCES"),) * 3
    assert out.run_count == 1
    assert out.runs == (Run(ep="c0", size_in=10, win_in=10, steps=(), size_out=10, verdict=SK_DROP, ctx=ctx(0),
                            head=Data(ABC[:10])),)
    assert out.endpoints["p0"] == Endpoint(rx=Data(b""), fionread=0, end="EAGAIN")


@kernel
def test_w7_cork_holds_until_satisfied(pool: KernelPool) -> None:
    events = (Send("c0", 4), Send("c0", 4), Fionread("p0"), Recv("p0", 100), Send("c0", 4))
    out = run_ok(pool, spec_case((Invocation((CorkBytes(10),)),), events))
    assert out.events == (
        EventResult(ret=4), EventResult(ret=4), EventResult(ret=0), EventResult(ret="EAGAIN"), EventResult(ret=4),
    )
    assert out.run_count == 2
    first, flush = out.runs
    assert first == Run(ep="c0", size_in=4, win_in=4, steps=(StepRecord(rc=0, win=4),), size_out=4,
                        verdict=SK_PASS, ctx=ctx(0), head=Data(ABC[:4]))
    # The flush run sees the corked 12 bytes; with a fresh thread per send the appended bytes
    # never coalesce, so the window is the first syscall's 4 bytes (spec §2.2).
    assert flush == Run(ep="c0", size_in=12, win_in=4, steps=(StepRecord(rc=0, win=4),), size_out=12,
                        verdict=SK_PASS, ctx=ctx(4), head=Data(ABC[:4]))
    assert out.endpoints["p0"].rx == Data(ABC[:12])


@kernel
def test_w22_pass_send_after_shutdown_raises_sigpipe(pool: KernelPool) -> None:
    program = (Invocation((Redirect(1, BPF_F_INGRESS),)), Invocation())
    events = (Shutdown("c0", "SHUT_WR"), Send("c0", 5), Send("c0", 5))
    out = run_ok(pool, spec_case(program, events))
    assert out.events == (EventResult(ret=0), EventResult(ret=5), EventResult(ret="EPIPE", sigpipe=True))
    assert out.run_count == 2
    assert [r.steps for r in out.runs] == [(StepRecord(rc=SK_PASS, win=5),), ()]
    assert [r.ctx.task for r in out.runs] == [1, 2]
    assert out.endpoints["p0"].rx == Data(ABC[:5])
    assert out.endpoints["p0"].end == "EOF"


@kernel
def test_msg_nosignal_send_after_shutdown_has_no_sigpipe(pool: KernelPool) -> None:
    events = (Shutdown("c0", "SHUT_WR"), Send("c0", 5, ("MSG_NOSIGNAL",)), Send("c0", 5))
    out = run_ok(pool, spec_case((Invocation(),), events, fresh_thread=False))
    assert out.events == (EventResult(ret=0), EventResult(ret="EPIPE"), EventResult(ret="EPIPE", sigpipe=True))


# ---- every event kind -----------------------------------------------------------------------------


@kernel
def test_every_event_kind(pool: KernelPool) -> None:
    events: tuple[Event, ...] = (
        Send("c0", 10),                        # 0
        SendMsg("c0", (3, 0, 4, 5)),           # 1: 12 bytes in 4 iovecs, one run
        SendFile("c0", 7),                     # 2
        Splice("c0", 6),                       # 3
        Recv("p0", 5, peek=True),              # 4
        Recv("p0", 100),                       # 5
        Recv("p0", 100),                       # 6: empty -> EAGAIN
        Fionread("p1"),                        # 7
        Shutdown("c0", "SHUT_WR"),             # 8
        MapDelete(0),                          # 9
        MapDelete(0),                          # 10: a sockmap says EINVAL for an empty slot
        MapInsert(0, "c1"),                    # 11: c1 is in this map already (key 2): EBUSY
        Detach(),                              # 12
        Detach(),                              # 13: nothing attached
        Attach(),                              # 14
        Close("p1", rst=True),                 # 15
        Send("p1", 2),                         # 16: closed by the case: no syscall
        MapInsert(5, "p1"),                    # 17
        Send("c1", 3),                         # 18: the peer reset
        Close("c1"),                           # 19
    )
    out = run_ok(pool, spec_case((Invocation(),), events))
    sent = ABC[:35]
    assert out.events == (
        EventResult(ret=10), EventResult(ret=12), EventResult(ret=7), EventResult(ret=6),
        EventResult(ret=5, data=Data(sent[:5])), EventResult(ret=35, data=Data(sent)), EventResult(ret="EAGAIN"),
        EventResult(ret=0), EventResult(ret=0), EventResult(ret=0), EventResult(ret="EINVAL"), EventResult(ret="EBUSY"),
        EventResult(ret=0), EventResult(ret="ENOENT"), EventResult(ret=0), EventResult(ret=None),
        EventResult(ret="EBADF"), EventResult(ret="EBADF"), EventResult(ret="ECONNRESET"), EventResult(ret=None),
    )
    assert [(r.ep, r.size_in, r.ctx.task) for r in out.runs] == [("c0", 10, 0), ("c0", 12, 1), ("c0", 7, 2),
                                                                 ("c0", 6, 3)]
    assert out.run_count == 4
    assert out.endpoints["c0"] == Endpoint(rx=Data(b""), fionread=0, end="EAGAIN")
    assert out.endpoints["p0"] == Endpoint(rx=Data(b""), fionread=0, end="EOF")  # c0 shut down its side
    assert out.endpoints["c1"] == Endpoint(rx=Data(b""), fionread=None, end="closed")
    assert out.endpoints["p1"] == Endpoint(rx=Data(b""), fionread=None, end="closed")


@kernel
def test_sendmsg_cuts_payload_into_iovecs_in_order(pool: KernelPool) -> None:
    out = run_ok(pool, Case(inserts=(MapEntry(0, "c0"),), events=(SendMsg("c0", (1, 2, 3, 50)),)))
    assert out.events == (EventResult(ret=56),)
    assert out.run_count == 1 and out.runs[0].size_in == 56
    assert out.endpoints["p0"].rx == Data((ABC * 2)[:56])


@kernel
def test_held_msg_more_bytes_are_pushed_before_recv_and_fionread(pool: KernelPool) -> None:
    # Spec §5.1: MSG_MORE holds a partial segment for ~200 ms; the runner re-sets TCP_NODELAY
    # before recv/fionread (kernel-notes N1), so the bytes are there at once.  Plain TCP (no map)
    # and a socket in the map behave the same.
    for inserts in ((), (MapEntry(0, "c0"),)):
        case = Case(inserts=inserts, events=(Send("c0", 7, ("MSG_MORE",)), Fionread("p0"), Recv("p0", 100)))
        out = run_ok(pool, case)
        assert out.events == (EventResult(ret=7), EventResult(ret=7), EventResult(ret=7, data=Data(ABC[:7])))


@kernel
def test_held_bytes_reach_the_final_drain(pool: KernelPool) -> None:
    out = run_ok(pool, Case(inserts=(MapEntry(0, "c0"),), events=(Send("c0", 9, ("MSG_MORE",)),)))
    assert out.endpoints["p0"].rx == Data(ABC[:9])


@kernel
def test_close_rst_resets_the_peer_and_fin_gives_eof(pool: KernelPool) -> None:
    case = Case(pairs=2, events=(Send("c0", 3), Close("c0", rst=True), Send("c1", 4), Close("c1")))
    out = run_ok(pool, case)
    assert out.endpoints["p0"].end == "ECONNRESET"
    assert out.endpoints["p1"] == Endpoint(rx=Data(ABC[3:7]), fionread=4, end="EOF")


@kernel
def test_a_fin_held_by_the_congestion_window_arrives_before_the_next_event(pool: KernelPool) -> None:
    # kernel-notes N21: eleven redirected sends with a pushed byte make p0 send one-byte segments
    # until c0 delays its ACKs; close(p0) queues the FIN behind them.  The model takes it as
    # arrived, so the runner waits for it (Topology.await_end).  Without the wait c0's last send
    # met p0 in FIN_WAIT1 and c0 ended with ECONNRESET, on every run here.
    case = load_case(str(EVIDENCE / "N21_fin_held_by_cwnd.json"))
    out = run_ok(pool, case)
    assert out.endpoints["c0"].end == "EOF"


@kernel
def test_sockopts_are_set_before_the_events(pool: KernelPool) -> None:
    # A receiver with a tiny buffer cannot hold 1 MB; MSG_DONTWAIT makes the send partial.
    case = Case(sockopts=(SockOpt("c0", sndbuf=4096), SockOpt("p0", rcvbuf=2048)),
                events=(Send("c0", 1 << 20, ("MSG_DONTWAIT",)),))
    out = run_ok(pool, case)
    ret = out.events[0].ret
    assert isinstance(ret, int) and 0 < ret < 1 << 18
    assert len(out.endpoints["p0"].rx) <= ret


@kernel
@pytest.mark.slow
def test_w21_drain_collects_bytes_held_back_by_a_full_window(pool: KernelPool) -> None:
    # Spec W21: the second send's bytes were pushed to TCP but dropped by p0's full receive
    # buffer; they come back with the retransmit timer, 4 KiB at a time (about 1.7 s here).
    # The drain waits for every byte c0 wrote (docs/execution.md: pushed bytes count as arrived).
    events = tuple(Send("c0", 200000, ("MSG_DONTWAIT",)) for _ in range(3))
    case = spec_case((Invocation(),), events, sockopts=(SockOpt("c0", sndbuf=4096), SockOpt("p0", rcvbuf=2048)))
    out = run_ok(pool, case)
    assert out.events == (EventResult(ret=32741), EventResult(ret=32741), EventResult(ret="EAGAIN"))
    assert out.run_count == 1
    assert out.endpoints["p0"].rx == Data(case.payload_for(0)[:32741] + case.payload_for(1)[:32741])
    assert out.endpoints["p0"].end == "EAGAIN"


# ---- threads and the context ---------------------------------------------------------------------


@kernel
def test_fresh_thread_pins_the_window(pool: KernelPool) -> None:
    # Spec §2.2: each send from a new thread starts a new page frag, so four 10000-byte sends
    # each see a 10000-byte window.  From one thread the frag fills up: one send straddles the
    # end of the 32 KiB page and sees a smaller first element.
    events = tuple(Send("c0", 10000) for _ in range(4))
    fresh = run_ok(pool, Case(inserts=(MapEntry(0, "c0"),), events=events, fresh_thread=True))
    assert [r.win_in for r in fresh.runs] == [10000] * 4
    assert [r.ctx.task for r in fresh.runs] == [0, 1, 2, 3]
    same = run_ok(pool, Case(inserts=(MapEntry(0, "c0"),), events=events, fresh_thread=False))
    assert [r.ctx.task for r in same.runs] == [0, 1, 2, 3]
    assert min(r.win_in or 0 for r in same.runs) < 10000


@kernel
def test_context_names_endpoints_ipv6_sockhash(pool: KernelPool) -> None:
    case = Case(pairs=2, family="ipv6", map=MapSpec(type="sockhash", size=8),
                inserts=(MapEntry(7, "p1"), MapEntry(3, "c1")), program=(Invocation((Redirect(3),)),),
                events=(Send("p1", 6),))
    out = run_ok(pool, case)
    assert out.events == (EventResult(ret=6),)
    (run,) = out.runs
    assert run.ctx == RunContext(family=AF_INET6, local="p1", remote="c1", task=0)
    assert run.steps == (StepRecord(rc=SK_PASS, win=6),)
    # Egress redirect to c1: the bytes leave through c1 and arrive at its peer p1 (spec §7.3).
    assert out.endpoints["p1"].rx == Data(ABC[:6])


@kernel
def test_push_data_records_helper_and_window(pool: KernelPool) -> None:
    out = run_ok(pool, spec_case((Invocation((PushData(3, 2),)),), (Send("c0", 10),)))
    (run,) = out.runs
    assert (run.size_in, run.steps[0].rc, run.size_out) == (10, 0, 12)
    rx = out.endpoints["p0"].rx.raw
    assert len(rx) == 12 and rx[:3] == ABC[:3] and rx[5:] == ABC[3:10]  # spec W14: ABC??DEFGHIJ


# ---- records: the byte-order quirk and unknown addresses (no kernel needed) -------------------------


def _raw(local_port: int, remote_port: int, ip: bytes = socket.inet_aton("127.0.0.1"), tid: int = 5) -> RawRun:
    return RawRun(size_in=3, win_in=3, rcs=(0, -22), wins=(3, 3), size_out=3, verdict=1, family=AF_INET,
                  local_ip=ip, local_port=local_port, remote_ip=ip, remote_port=remote_port, tid=tid)


def test_records_decode_local_host_order_remote_network_order() -> None:
    lo = socket.inet_aton("127.0.0.1")
    table = {(lo, 40000): "c0", (lo, 1234): "p0"}
    raw = _raw(local_port=40000, remote_port=socket.htons(1234) << 16)
    run = to_run(raw, "c0", 0, lambda ip, port, prefer: table.get((ip, port)))
    assert run.ctx == RunContext(family=AF_INET, local="c0", remote="p0", task=0)
    assert run.steps == (StepRecord(rc=0, win=3), StepRecord(rc=-22, win=3))
    # The same numbers read the other way round name nobody: reported raw, as the program saw them.
    swapped = to_run(_raw(socket.htons(40000), 1234 << 16), "c0", "?77", lambda ip, port, prefer: table.get((ip, port)))
    assert swapped.ctx.local == f"?127.0.0.1:{socket.htons(40000)}"
    assert swapped.ctx.remote == f"?127.0.0.1:{1234 << 16}"
    assert swapped.ctx.task == "?77"


def test_a_port_two_connectors_share_names_the_sender_or_its_peer() -> None:
    # connect() gives c0 and c1 the same ephemeral port when their listeners differ.
    lo = socket.inet_aton("127.0.0.1")
    topo = Topology(AF_INET)
    topo.addresses = {(lo, 40000): ("c0", "c1"), (lo, 1000): ("p0",), (lo, 1001): ("p1",)}
    c1 = to_run(_raw(local_port=40000, remote_port=socket.htons(1001) << 16), "c1", 0, topo.endpoint_at)
    assert (c1.ctx.local, c1.ctx.remote) == ("c1", "p1")
    p0 = to_run(_raw(local_port=1000, remote_port=socket.htons(40000) << 16), "p0", 1, topo.endpoint_at)
    assert (p0.ctx.local, p0.ctx.remote) == ("p0", "c0")
    # Nothing to choose by (a thread no send had): the shared port names nobody.
    assert topo.endpoint_at(lo, 40000, None) is None and topo.endpoint_at(lo, 1000, None) == "p0"


def test_records_unknown_ipv6_and_wide_remote_port() -> None:
    assert endpoint_name(socket.inet_pton(socket.AF_INET6, "::1"), 80, lambda ip, port, prefer: None) == "?[::1]:80"
    assert remote_port_host(0x59C2_0000) == 0xC259
    assert remote_port_host(0x0000_59C2) == -1  # the port in the low half: no kernel reads it so
