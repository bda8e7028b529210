"""Debian 6.1.192's own rules (sim/profile.py push_copies_to_task_frag, tcp_bpf_sendpage) against the
6.18.44 reference, on small cases, model only.

- push_copies_to_task_frag: 6.1.184+'s tcp_bpf_push hands the element to a tcp_sendmsg_locked
  without MSG_SPLICE_PAGES, which copies the bytes into the sending thread's task frag: a named
  thread's next send starts after that copy.  Measured on vm:6.1 (docs/kernel-notes.md N19):
  T02's second window 20000 (12768 on 6.18.44); the K4 partial-push probe returns 1, not 0.
- tcp_bpf_sendpage: sendfile and splice call tcp_bpf_sendpage once per pipe buffer, each page an
  sg.copy element with an empty window.  Measured on vm:6.1: W19's 25 runs of (4096, 0) ... (1696, 0).

The expected numbers are the kernels' (vm:6.1 and the 6.18.44 host), and the rule gives them.
"""

from __future__ import annotations

from model_builders import CorkBytes, PullData, Redirect, Write, case, inv, rets, run_sizes, rx

import sim
from diffuzz.contract.case import ApplyBytes, Case, Close, MapEntry, Payload, Recv, Send, SendFile, Splice
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.probes import choose_profile, run_probes
from sim.page_frag import PAGE_FRAG_SIZE, PageFrag, tcp_copy_to_frag
from sim.profile import PROFILES, REFERENCE, get_profile
from sim.splice import PIPE_BUF_SIZE, splice_from_pipe
from sim.tcp import Sock

V61 = get_profile("6.1.192")


def both(c: Case) -> tuple[Outcome, Outcome]:
    return sim.run(c, REFERENCE), sim.run(c, V61)


def tsend(n: int, thread: int = 0) -> Send:
    return Send(ep="c0", len=n, thread=thread)


# ---- push_copies_to_task_frag ----------------------------------------------------------


def test_pass_push_moves_the_thread_frag_on_6_1() -> None:
    # T02: send 0's element is P[0, 20000).  6.18 splices it (the frag stays at 20000: 12768 left);
    # 6.1 copies it to P[20000, 32768) + P2[0, 7232), so send 1 starts at P2 + 7232 with 25536 left.
    ref, old = both(case(inv(), [tsend(20000), tsend(20000)]))
    assert run_sizes(ref) == [(20000, 20000), (20000, 12768)]
    assert run_sizes(old) == [(20000, 20000), (20000, 20000)]
    assert rx(ref, "p0") == rx(old, "p0")  # the same bytes either way


def test_egress_push_copies_into_the_senders_frag() -> None:
    # The target's tcp_sendmsg_locked runs in the sender's task: sk_page_frag is current->task_frag.
    ref, old = both(case(inv(Redirect(2, 0)), [tsend(20000), tsend(20000)]))
    assert run_sizes(ref)[1] == (20000, 12768)
    assert run_sizes(old)[1] == (20000, 20000)
    assert len(rx(old, "p1")) == 40000


def test_ingress_redirect_moves_no_bytes_through_tcp() -> None:
    # bpf_tcp_ingress moves the element: no copy on any kernel.
    ref, old = both(case(inv(Redirect(3, 1)), [tsend(20000), tsend(20000)]))
    assert run_sizes(ref)[1] == run_sizes(old)[1] == (20000, 12768)


def test_k4_partial_push_cannot_happen_on_6_1() -> None:
    # The memcopy_return probe: the push of "A" moves the frag to offset 3, so "C" gets its own
    # element and the copy is right.  Send 1 returns 1; run 2 sees the cork struct's stale
    # apply_bytes(1) from run 0 and passes "B" only; run 3 corks "C" for ever (vm:6.1: p0 "AB").
    c = case((inv(ApplyBytes(1)), inv(CorkBytes(2))), [tsend(2), tsend(1)], pairs=1,
             inserts=(MapEntry(0, "c0"), MapEntry(1, "p0")))
    ref, old = both(c)
    assert rets(ref) == [2, 0] and ref.notes["kernel_bugs"] == ["K4"]
    assert rets(old) == [2, 1] and "kernel_bugs" not in old.notes
    assert old.run_count == 4 and rx(old, "p0") == "AB"


def test_copy_follows_skb_boundaries() -> None:
    # tcp_sendmsg_locked refills before every chunk, and a chunk ends where the tail skb is full:
    # an skb that ends 20 bytes before the page's end (fewer than 32) sends the rest to a new page.
    sk = Sock("c0")
    frag = PageFrag()
    tcp_copy_to_frag(frag, sk, PAGE_FRAG_SIZE, PAGE_FRAG_SIZE - 20)
    assert frag.offset == 20 and len(sk.tx_pages) == 2
    whole = PageFrag()
    tcp_copy_to_frag(whole, sk, PAGE_FRAG_SIZE, 0)  # a new skb takes the whole page
    assert whole.offset == PAGE_FRAG_SIZE


# ---- tcp_bpf_sendpage --------------------------------------------------------------------


def test_sendfile_runs_per_page_with_empty_windows() -> None:
    ref, old = both(case(inv(), [SendFile(ep="c0", len=10000)]))
    assert run_sizes(ref) == [(10000, 10000)]
    assert run_sizes(old) == [(4096, 0), (4096, 0), (1808, 0)]
    assert rets(old) == [10000] and rx(old, "p0") == rx(ref, "p0")
    assert all(r.head is not None and not r.head.raw for r in old.runs)  # nothing in [data, data_end)


def test_splice_runs_per_pipe_buffer() -> None:
    ref, old = both(case(inv(), [Splice(ep="c0", len=9000, flags=("SPLICE_F_MORE",)), Recv(ep="p0", len=20000)]))
    assert run_sizes(ref) == [(9000, 9000)]
    assert run_sizes(old) == [(4096, 0), (4096, 0), (808, 0)]
    assert rets(old) == rets(ref) == [9000, 9000]


def test_cork_is_paid_per_page() -> None:
    # 10000 > 4096 corks run 0; 4096 <= 5904 keeps corking; 1808 is not > 1808: cork_bytes 0, run again.
    ref, old = both(case(inv(CorkBytes(10000)), [SendFile(ep="c0", len=10000)]))
    assert run_sizes(ref) == [(10000, 10000)]
    assert run_sizes(old) == [(4096, 0), (10000, 0)]


def test_copy_element_window_is_empty_until_a_pull() -> None:
    # The store before the pull fails on the copy element (rc -1); the pull always linearises it.
    prog = inv(Write(0, b"zz"), PullData(0, 100), Write(0, b"yy"))
    ref, old = both(case(prog, [SendFile(ep="c0", len=5000)]))
    assert [s.rc for s in ref.runs[0].steps] == [0, 0, 0]
    assert [(s.rc, s.win) for s in old.runs[0].steps] == [(-1, 0), (0, 100), (0, 100)]
    assert rx(old, "p0").startswith("yy")


def test_reset_socket_runs_its_program_and_clears_sk_err() -> None:
    # No sk_err check in tcp_bpf_sendpage: the push meets it in tcp_sendmsg_locked (sock_error
    # clears it), PASS stays sticky, later sends get EPIPE + SIGPIPE.  6.18: ECONNRESET every time.
    events = [Close(ep="p0", rst=True), SendFile(ep="c0", len=10), SendFile(ep="c0", len=10), Send(ep="c0", len=5)]
    ref, old = both(case(inv(), events))
    assert rets(ref) == [None, "ECONNRESET", "ECONNRESET", "ECONNRESET"] and ref.run_count == 0
    assert rets(old) == [None, "ECONNRESET", "EPIPE", "EPIPE"] and old.run_count == 1
    assert [e.sigpipe for e in old.events[2:]] == [True, True]


def test_reset_socket_still_redirects_to_ingress() -> None:
    ref, old = both(case(inv(Redirect(3, 1)), [Close(ep="p0", rst=True), SendFile(ep="c0", len=10),
                                               Recv(ep="p1", len=100)]))
    assert rets(ref) == [None, "ECONNRESET", "EAGAIN"]
    assert rets(old) == [None, 10, 10]


def test_splice_from_pipe_offers_the_rest_of_a_buffer_again() -> None:
    calls: list[tuple[int, int]] = []

    def sendpage(chunk: bytes, flags: int) -> int:
        calls.append((len(chunk), flags))
        return min(len(chunk), 1000) if len(calls) < 4 else 0

    assert splice_from_pipe(sendpage, bytes(PIPE_BUF_SIZE + 10), True) == 3000
    assert [n for n, _ in calls] == [4096, 3096, 2096, 1096]  # the same page until a 0 ends it
    assert {f for _, f in calls} == {0x8000}  # SPLICE_F_MORE -> MSG_MORE on every page


# ---- probes --------------------------------------------------------------------------------


def test_probes_pick_each_vm_profile_from_its_own_model() -> None:
    # The model under a profile, probed as if it were a kernel, is recognised as that profile; on
    # 6.1 the memcopy_return probe matches with memcopy_returns_copied undecided (no K4 there).
    for name in ("6.1.192", "6.12.118", "7.2.13", REFERENCE.name):
        profile = PROFILES[name]
        choice = choose_profile(run_probes(lambda c, p=profile: sim.run(c, p)))
        assert choice.profile.name == name and choice.exact, choice.line()
    memcopy = next(r for r in run_probes(lambda c: sim.run(c, V61)) if r.probe == "memcopy_return")
    assert memcopy.matched and memcopy.found == {"memcopy_returns_copied": None}


def test_random_payload_bytes_survive_the_copy() -> None:
    c = case(inv(), [tsend(20000), tsend(20000)], payload=Payload("random", 7))
    ref, old = both(c)
    assert rx(ref, "p0") == rx(old, "p0")
