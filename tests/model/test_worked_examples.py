"""Every worked example of spec §12 (W1..W26), written as a Case, with its observables.

Return values, program runs as (msg->size, data_end - data), the bytes each endpoint reads
and FIONREAD are asserted exactly as the spec gives them ("?" = an uninitialised byte).
"""

from __future__ import annotations

from model_builders import (
    DROP,
    ApplyBytes,
    CorkBytes,
    PopData,
    PullData,
    PushData,
    Recv,
    Redirect,
    Write,
    case,
    inv,
    rets,
    run_sizes,
    rx,
    send,
)

import sim
from diffuzz.contract.case import Close, Detach, Fionread, MapDelete, MapEntry, SendFile, Shutdown

ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def test_w1_plain_pass() -> None:
    o = sim.run(case(inv(), [send(10)]))
    assert rets(o) == [10]
    assert run_sizes(o) == [(10, 10)]
    assert rx(o, "p0") == "ABCDEFGHIJ"
    assert o.runs[0].verdict == 1 and o.runs[0].ep == "c0"
    assert (o.runs[0].ctx.local, o.runs[0].ctx.remote, o.runs[0].ctx.task, o.runs[0].ctx.family) == ("c0", "p0", 0, 2)


def test_w2_apply1_every_run() -> None:
    o = sim.run(case(inv(ApplyBytes(1)), [send(10)]))
    assert rets(o) == [10]
    assert run_sizes(o) == [(n, n) for n in range(10, 0, -1)]
    assert rx(o, "p0") == "ABCDEFGHIJ"


def test_w2b_apply15_leftover_spans_sends() -> None:
    o = sim.run(case(inv(ApplyBytes(15)), [send(10), send(10), send(10)]))
    assert rets(o) == [10, 10, 10]
    assert run_sizes(o) == [(10, 10), (5, 5)]
    assert [r.ctx.task for r in o.runs] == [0, 1]
    assert rx(o, "p0") == ALPHA[:30]


def test_w3_sticky_drop() -> None:
    o = sim.run(case((inv(verdict=DROP), inv()), [send(10), send(10), send(5)]))
    assert rets(o) == ["EACCES"] * 3
    assert o.run_count == 1
    assert rx(o, "p0") == ""


def test_w4_drop_with_apply4() -> None:
    o = sim.run(case(inv(ApplyBytes(4), verdict=DROP), [send(10), send(10)]))
    assert rets(o) == [6, "EACCES"]
    assert o.run_count == 1
    assert rx(o, "p0") == ""


def test_w5_drop_with_apply15() -> None:
    o = sim.run(case(inv(ApplyBytes(15), verdict=DROP), [send(10), send(10), send(10)]))
    assert rets(o) == ["EACCES", 5, "EACCES"]
    assert o.run_count == 1
    assert rx(o, "p0") == ""


def test_w6_delta_rule() -> None:
    rows = [
        (inv(PushData(0, 4), ApplyBytes(4), verdict=DROP), 10),
        (inv(PushData(0, 4), verdict=DROP), "EACCES"),
        (inv(PopData(0, 3), verdict=DROP), "EACCES"),
        (inv(PopData(0, 3), ApplyBytes(4), verdict=DROP), 3),
    ]
    for program, ret in rows:
        o = sim.run(case(program, [send(10)]))
        assert rets(o) == [ret], program
        assert rx(o, "p0") == ""


def test_w7_cork() -> None:
    o = sim.run(case(inv(CorkBytes(10)), [send(4), send(4), Recv("p0", 100), Fionread("p0"), send(4)]))
    assert rets(o) == [4, 4, "EAGAIN", 0, 4]
    assert run_sizes(o) == [(4, 4), (12, 4)]  # the flush: three non-coalesced 4-byte elements
    assert rx(o, "p0") == ALPHA[:12]


def test_w8_cork_then_drop_on_flush() -> None:
    o = sim.run(case((inv(CorkBytes(10)), inv(verdict=DROP)), [send(4), send(4), send(4), send(3)]))
    assert rets(o) == [4, 4, "EACCES", "EACCES"]
    assert [r.size_in for r in o.runs] == [4, 12]
    assert rx(o, "p0") == ""


def test_w9_stale_cork_bytes() -> None:
    o = sim.run(case((inv(CorkBytes(10)), inv()), [send(4), send(8), Recv("p0", 100), send(3), send(8)]))
    assert rets(o) == [4, 8, 12, 3, 8]
    assert [r.size_in for r in o.runs] == [4, 12, 3, 11]
    assert o.events[2].data is not None and o.events[2].data.raw == ALPHA[:12].encode()
    assert rx(o, "p0") == ALPHA[12:23]


def test_w10_stale_redirect_and_apply_across_reruns() -> None:
    o = sim.run(case((inv(ApplyBytes(2), Redirect(3)), inv()), [send(6), send(4)]))
    assert rets(o) == [6, 4]
    assert [r.size_in for r in o.runs] == [6, 4, 2, 4]
    assert rx(o, "c1") == "ABCDEF"
    assert rx(o, "p0") == "GHIJ"
    assert rx(o, "p1") == ""


def test_w11_cork_apply_redirect_drops_leftover() -> None:
    o = sim.run(case(inv(CorkBytes(10), ApplyBytes(4), Redirect(3)), [send(4), send(8), send(12)]))
    assert rets(o) == [4, 8, 12]
    assert [r.size_in for r in o.runs] == [4, 12, 12, 8]
    assert rx(o, "c1") == "ABCDMNOP"
    assert rx(o, "p0") == ""


def test_w12_read_order_ingress_fionread() -> None:
    program = (inv(), inv(Redirect(1, flags=1)), inv(), inv(Redirect(0, flags=1)), inv())
    events = [send(5), send(5), send(5), send(5), Fionread("p0"), Recv("p0", 100, peek=True),
              Recv("p0", 100), Recv("p0", 100), Recv("c0", 100)]
    o = sim.run(case(program, events))
    assert rets(o) == [5, 5, 5, 5, 5, 5, 5, 10, 5]
    assert [e.data.raw for e in o.events[5:] if e.data] == [b"FGHIJ", b"FGHIJ", b"ABCDEKLMNO", b"PQRST"]


def test_w14_push_pop_boundaries() -> None:
    rows = [
        (PushData(0, 4), 0, "????ABCDEFGHIJ", 4),
        (PushData(10, 3), 0, "ABCDEFGHIJ???", 10),
        (PushData(11, 1), -22, "ABCDEFGHIJ", 10),
        (PopData(8, 2), 0, "ABCDEFGH", 8),
        (PopData(0, 10), 0, "", 0),
        (PopData(5, 6), -22, "ABCDEFGHIJ", 10),
        (PushData(3, 2), 0, "ABC??DEFGHIJ", 3),
    ]
    for step, rc, got, win in rows:
        o = sim.run(case(inv(step), [send(10)]))
        assert rets(o) == [10], step
        assert o.runs[0].steps[0].rc == rc, step
        assert o.runs[0].steps[0].win == win, step
        assert rx(o, "p0") == got, step


def test_w15_push_into_non_first_element() -> None:
    o = sim.run(case(inv(PushData(0, 4), PushData(6, 2)), [send(10)]))
    assert rx(o, "p0") == "????AB??CDEFGHIJ"
    assert o.runs[0].size_out == 16


def test_w16_multi_element_pops() -> None:
    for pop, got in ((PopData(2, 5), "??DEFGHIJ"), (PopData(3, 7), "???GHIJ"), (PopData(4, 6), "????GHIJ")):
        o = sim.run(case(inv(PushData(0, 4), pop), [send(10)]))
        assert [s.rc for s in o.runs[0].steps] == [0, 0]
        assert rx(o, "p0") == got, pop


def test_w17_redirect_target_removed() -> None:
    o = sim.run(case((inv(ApplyBytes(3), Redirect(3)), inv()), [send(2), MapDelete(3), send(5), send(5)]))
    assert rets(o) == [2, 0, "EPIPE", 5]
    assert o.events[2].sigpipe
    assert rx(o, "c1") == "AB"
    assert rx(o, "p0") == "HIJKL"
    assert o.run_count == 2


def test_w17_nosignal_suppresses_sigpipe() -> None:
    events = [send(2), MapDelete(3), send(5, flags=("MSG_NOSIGNAL",))]
    o = sim.run(case((inv(ApplyBytes(3), Redirect(3)), inv()), events))
    assert rets(o) == [2, 0, "EPIPE"]
    assert not o.events[2].sigpipe


def test_w18_close_with_corked_data() -> None:
    o = sim.run(case(inv(CorkBytes(100)), [send(10), Close("c0")]))
    assert rets(o) == [10, None]
    assert rx(o, "p0") == "" and o.endpoints["p0"].end == "EOF"
    assert o.endpoints["c0"].end == "closed" and o.endpoints["c0"].fionread is None


def test_w19_sendfile_batching() -> None:
    o = sim.run(case(inv(), [SendFile("c0", 100000)]))
    assert rets(o) == [100000]
    assert run_sizes(o) == [(65536, 32768), (34464, 32768)]
    assert len(o.endpoints["p0"].rx) == 100000


def test_w20_removal_loses_ingress_detach_keeps_runs() -> None:
    events = [send(5), Fionread("p0"), MapDelete(1), Fionread("p0"), Recv("p0", 100), Detach(), send(3)]
    o = sim.run(case((inv(Redirect(1, flags=1)), inv()), events))
    assert rets(o) == [5, 5, 0, 0, "EAGAIN", 0, 3]
    assert o.run_count == 2
    assert rx(o, "p0") == "FGH"


def test_w22_send_after_shutdown_with_redirect() -> None:
    o = sim.run(case((inv(Redirect(1, flags=1)), inv()), [Shutdown("c0", "SHUT_WR"), send(5), send(5)]))
    assert rets(o) == [0, 5, "EPIPE"]
    assert o.events[2].sigpipe
    assert rx(o, "p0") == "ABCDE" and o.endpoints["p0"].end == "EOF"


def test_w23_failed_redirect_keeps_stale_target() -> None:
    o = sim.run(case(inv(CorkBytes(10), Redirect(3)), [send(4), MapDelete(3), send(8), send(4)]))
    assert rets(o) == [4, 0, 8, 4]
    assert [[s.rc for s in r.steps] for r in o.runs] == [[0, 1], [0, 0], [0, 0]]
    assert [r.size_in for r in o.runs] == [4, 12, 4]
    assert all(rx(o, ep) == "" for ep in ("c0", "p0", "c1", "p1"))


def test_w24a_basic_pop() -> None:
    from diffuzz.contract.case import Payload

    o = sim.run(case(inv(PopData(1, 2)), [send(3), send(3)], payload=Payload("alphabet", 6)))
    assert rx(o, "p0") == "GJ"


def test_w24b_apply1_pop1() -> None:
    o = sim.run(case(inv(ApplyBytes(1), PopData(0, 1)), [send(3), send(3)]))
    assert rets(o) == [3, 3]
    assert [r.size_in for r in o.runs] == [3, 1, 2]
    assert rx(o, "p0") == "BDF"


def test_w25_verdict_values_and_redirect_failures() -> None:
    o = sim.run(case((inv(verdict=2), inv()), [send(10), send(10)]))
    assert rets(o) == ["EACCES", "EACCES"] and o.run_count == 1
    for step in (Redirect(3, flags=2), Redirect(5), Redirect(100)):
        o = sim.run(case(inv(step), [send(10)], inserts=(MapEntry(0, "c0"), MapEntry(1, "p0"))))
        assert o.runs[0].steps[0].rc == 0
        assert rx(o, "p0") == "ABCDEFGHIJ"


def test_w26_drop_with_cork_is_not_applied() -> None:
    o = sim.run(case((inv(CorkBytes(10), verdict=DROP), inv()), [send(4), send(8), Recv("p0", 100), send(3)]))
    assert rets(o) == [4, 8, 12, 3]
    assert [r.size_in for r in o.runs] == [4, 12, 3]
    assert rx(o, "p0") == ""


def test_pull_pins_window_and_write_lands() -> None:
    """§6.4 [V: (2,5) -> window "CDE"]; a write into the pulled window changes the bytes."""
    o = sim.run(case(inv(PullData(2, 5), Write(0, b"xyz")), [send(10)], fresh_thread=False))
    assert [(s.rc, s.win) for s in o.runs[0].steps] == [(0, 3), (0, 3)]
    assert o.runs[0].win_in is None  # not pinned without fresh_thread
    assert rx(o, "p0") == "ABxyzFGHIJ"


def test_write_over_pushed_bytes_makes_them_known() -> None:
    o = sim.run(case(inv(PushData(0, 4), Write(1, b"ab"), Write(3, b"zz")), [send(6)]))
    assert [s.rc for s in o.runs[0].steps] == [0, 0, -1]
    assert rx(o, "p0") == "?ab?ABCDEF"
