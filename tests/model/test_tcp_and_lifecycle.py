"""Plain TCP rules the model needs around sk_msg (sim/tcp.py), map and lifecycle events
(spec §1.1, §9), sendfile/splice batching (§8.1), and the run shortcut of
tcp_bpf_send_verdict against the literal loop."""

from __future__ import annotations

from hypothesis import given, settings
from model_builders import ApplyBytes, CorkBytes, PopData, PushData, Redirect, case, inv, rets, rx, send

import sim
from diffuzz.contract.case import (
    Attach,
    Close,
    Detach,
    Fionread,
    MapDelete,
    MapEntry,
    MapInsert,
    MapSpec,
    Recv,
    SendFile,
    Shutdown,
    Splice,
)
from diffuzz.engine.generate import standard_mix
from diffuzz.engine.strategies import standard_mix_cases
from sim.syscalls import run_world
from sim.world import World

NO_MAP = ()


def test_msg_more_bytes_are_pushed_before_an_rst_close() -> None:
    # p1's MSG_MORE bytes wait in its write queue; the runner pushes them before the close
    # (docs/execution.md), then p1, holding unread data, closes with an RST: c1 reads them,
    # then ECONNRESET (measured on 6.18).
    events = [send(5, "c1"), send(7, "p1", ("MSG_MORE",)), Close("p1")]
    o = sim.run(case(inv(), events, inserts=NO_MAP))
    assert rets(o) == [5, 7, None]
    assert rx(o, "c1") == "FGHIJKL" and o.endpoints["c1"].end == "ECONNRESET"
    # Without unread data the FIN pushes them out first.
    o = sim.run(case(inv(), [send(7, "p1", ("MSG_MORE",)), Close("p1")], inserts=NO_MAP))
    assert rx(o, "c1") == "ABCDEFG" and o.endpoints["c1"].end == "EOF"


def test_recv_pushes_held_frames() -> None:
    o = sim.run(case(inv(), [send(3, "c1", ("MSG_MORE",)), Recv("p1", 10)], inserts=NO_MAP))
    assert o.events[1].ret == 3


def test_data_to_a_socket_shut_down_both_ways_resets_both() -> None:
    events = [Shutdown("p1", "SHUT_RDWR"), send(4, "c1"), send(4, "c1"), send(4, "c1", ("MSG_NOSIGNAL",))]
    o = sim.run(case(inv(), events, inserts=NO_MAP))
    # c1 got p1's FIN (CLOSE_WAIT), so the RST gives it EPIPE; p1 itself sees ECONNRESET.
    assert rets(o) == [0, 4, "EPIPE", "EPIPE"]
    assert [e.sigpipe for e in o.events] == [False, False, True, False]
    assert o.endpoints["p1"].end == "ECONNRESET" and rx(o, "p1") == ""


def test_reset_socket_in_map_keeps_returning_sk_err() -> None:
    """tcp_bpf_sendmsg reads sk_err without clearing it (§9.5)."""
    o = sim.run(case(inv(), [Close("p0", rst=True), send(3), send(3)]))
    assert rets(o) == [None, "ECONNRESET", "ECONNRESET"]
    o = sim.run(case(inv(), [Close("p1", rst=True), send(3, "c1"), send(3, "c1")], inserts=NO_MAP))
    assert rets(o) == [None, "ECONNRESET", "EPIPE"]  # plain TCP clears it, then SEND_SHUTDOWN


def test_closed_endpoint_is_ebadf() -> None:
    o = sim.run(case(inv(), [Close("c0"), send(3), Recv("c0", 3), Fionread("c0"), MapInsert(0, "c0")]))
    assert rets(o) == [None, "EBADF", "EBADF", "EBADF", "EBADF"]
    assert o.endpoints["c0"].end == "closed"


def test_insert_errors() -> None:
    c = case(inv(), [MapInsert(5, "c0"), MapInsert(16, "c1"), MapInsert(0, "p1", 1), MapInsert(12, "p1", 2),
                     MapInsert(2, "p1", 3), MapInsert(1, "c1", 4), MapInsert(9, "p1", 1), MapInsert(9, "p1", 2)],
             inserts=(MapEntry(0, "c0"), MapEntry(1, "p0")))
    o = sim.run(c)
    # c0 already has a psock with the program: EBUSY, also at another key (§1.1).
    assert rets(o) == ["EBUSY", "E2BIG", "EEXIST", "ENOENT", "EINVAL", "EINVAL", 0, "EBUSY"]
    o = sim.run(case(inv(), [Shutdown("c0", "SHUT_WR"), MapInsert(4, "c0"), MapInsert(5, "p0")], inserts=NO_MAP))
    assert rets(o) == [0, "EOPNOTSUPP", "EOPNOTSUPP"]  # FIN_WAIT and CLOSE_WAIT are not established
    o = sim.run(case(inv(), [MapInsert(9, "c1")], map=MapSpec("sockhash", 2)))
    assert o.inserts == (0, 0, "E2BIG", "E2BIG") and rets(o) == ["E2BIG"]


def test_delete_and_detach_errors() -> None:
    o = sim.run(case(inv(), [MapDelete(7), MapDelete(99), Detach(), Detach(), Attach(), Attach()]))
    assert rets(o) == ["EINVAL", "EINVAL", 0, "ENOENT", 0, 0]
    o = sim.run(case(inv(), [MapDelete(7)], map=MapSpec("sockhash", 8)))
    assert rets(o) == ["ENOENT"]


def test_replacing_a_key_unlinks_the_old_socket() -> None:
    c = case(inv(CorkBytes(100)), [send(4), MapInsert(0, "p1"), send(4), Fionread("c0")],
             inserts=(MapEntry(0, "c0"), MapEntry(1, "p0")))
    o = sim.run(c)
    assert rets(o) == [4, 0, 4, 0]
    assert o.run_count == 1  # c0 is plain TCP again: its cork is gone, the second send just goes
    assert rx(o, "p0") == "EFGH"


def test_socket_inserted_while_detached_runs_no_program() -> None:
    o = sim.run(case(inv(), [Detach(), MapInsert(5, "c1"), send(4, "c1"), Attach(), send(4, "c1")], inserts=NO_MAP))
    assert o.run_count == 0 and rx(o, "p1") == "ABCDEFGH"


def test_ingress_of_an_empty_message_blocks_the_queue() -> None:
    """pop everything + ingress redirect queues an empty message; sk_msg_recvmsg then copies
    nothing and returns -EFAULT (copy_page_to_iter of 0 bytes) without dequeuing it."""
    o = sim.run(case(inv(PopData(0, 4), Redirect(1, flags=1)), [send(4), Fionread("p0"), Recv("p0", 10)]))
    assert rets(o) == [4, 0, "EFAULT"]
    assert o.endpoints["p0"].end == "EFAULT"


def test_splice_and_sendfile_retry_after_partial_counts() -> None:
    # apply(4) + DROP returns 6 of 10: splice offers the other 4 bytes again (sticky DROP, 0
    # left -> -EACCES), sendfile then stops with 6.
    o = sim.run(case(inv(ApplyBytes(4), verdict=0), [Splice("c0", 10)]))
    assert rets(o) == [6] and o.run_count == 1
    o = sim.run(case(inv(ApplyBytes(4), verdict=0), [SendFile("c0", 10)]))
    assert rets(o) == [6]
    o = sim.run(case(inv(), [SendFile("c0", 0), Splice("c0", 0)]))
    assert rets(o) == [0, 0] and o.run_count == 0


def test_drop_can_return_more_than_was_sent() -> None:
    """§4.3: copied -= u32(tosend + delta); with push > apply the result exceeds the send."""
    o = sim.run(case(inv(PushData(0, 4), ApplyBytes(1), verdict=0), [send(10)]))
    assert rets(o) == [13]


def test_endless_send_loop_is_a_hang() -> None:
    o = sim.run(case(inv(ApplyBytes(1), PushData(0, 1)), [send(3)]))
    assert o.hang and "loop" in o.notes["hang"]


def _literal(c: object) -> object:
    w = World(c)  # type: ignore[arg-type]
    w.ff_ok = False
    return run_world(w)


def test_run_shortcut_equals_the_literal_loop_on_the_standard_mix() -> None:
    for i in range(400):
        c = standard_mix(7, i)
        assert sim.run(c) == _literal(c), i


@settings(max_examples=150)
@given(standard_mix_cases())
def test_run_shortcut_equals_the_literal_loop(c: object) -> None:
    assert sim.run(c) == _literal(c)  # type: ignore[arg-type]


def test_apply1_long_send_counts_every_run() -> None:
    o = sim.run(case(inv(ApplyBytes(1), Redirect(3)), [send(3000)]))
    assert o.run_count == 3000 and len(o.runs) == 64
    assert rx(o, "c1") == _literal(case(inv(ApplyBytes(1), Redirect(3)), [send(3000)])).endpoints["c1"].rx.raw.decode()


def test_world_payload_equals_case_payload_for() -> None:
    from diffuzz.contract.case import SEND_TYPES

    for i in range(300):
        c = standard_mix(11, i)
        w = World(c)
        for j, ev in enumerate(c.events):
            if isinstance(ev, SEND_TYPES):
                assert w.payload(j, ev.size) == c.payload_for(j), (i, j)


def test_held_bytes_are_pushed_before_a_close() -> None:
    """docs/execution.md: pending frames are pushed before a close, so p0's MSG_MORE bytes reach
    c0 first; c0 closes with them unread and resets p0 (measured on 6.18: p0 "GHIJ", ECONNRESET)."""
    events = [send(6, "p0", ("MSG_MORE",)), send(4, "c0"), Close("c0")]
    o = sim.run(case(inv(), events, inserts=()))
    assert rx(o, "p0") == "GHIJ" and o.endpoints["p0"].end == "ECONNRESET"
