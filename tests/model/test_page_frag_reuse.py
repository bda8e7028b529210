"""Page-frag reuse within one syscall (spec §2.1 refill; skb_page_frag_refill).

skb_page_frag_refill starts the frag's page again at offset 0 when page_ref_count(page) == 1:
every scatterlist element, skb and ingress message that took a reference on it has let go.
Inside one sendfile/splice that happens when the bytes of an earlier tcp_bpf_sendmsg call were
all freed (a failed redirect: sk_msg_free; pops; pulls) and splice_to_socket offers the rest
of the batch again.  Bytes handed to TCP or to an ingress queue keep their page references.

The whole-case expectations were measured on Linux 6.18.44 (`diffuzz run --side kernel`) and
are what the rule above gives: a retried call of n bytes sees a window of min(n, 32768) on a
reused page and min(n, 32768 - bytes already taken) on a page still held.
"""

from __future__ import annotations

from model_builders import ApplyBytes, PopData, PullData, Redirect, case, inv, run_sizes

import sim
from diffuzz.contract.case import MapEntry, SendFile, Shutdown, Splice
from sim.helpers import bpf_msg_pop_data, bpf_msg_pull_data
from sim.page_frag import PageFrag, sk_msg_alloc
from sim.sk_msg import SkMsg


def lens(m: SkMsg) -> list[int]:
    return [len(e.data) for e in m.elems]


def alloc(frag: PageFrag, n: int) -> SkMsg:
    m = SkMsg()
    sk_msg_alloc(m, b"x" * n, 0, n, frag)
    return m


def test_freed_page_is_reused_from_offset_zero() -> None:
    frag = PageFrag()
    alloc(frag, 16385).sk_msg_free()
    assert lens(alloc(frag, 16384)) == [16384]


def test_page_with_delivered_bytes_is_not_reused() -> None:
    frag = PageFrag()
    m = alloc(frag, 16385)
    m.consume_front(100)  # bpf_tcp_ingress: the ingress message keeps the page reference
    m.sk_msg_free()
    assert lens(alloc(frag, 16384)) == [32768 - 16385, 16384 - (32768 - 16385)]


def test_pop_and_pull_put_the_page() -> None:
    # sk_msg_shift_left puts the page of an element popped whole.
    frag = PageFrag()
    m = alloc(frag, 40000)
    assert lens(m) == [32768, 7232]
    assert bpf_msg_pop_data(m, 32768, 7232, 0) == 0
    assert lens(alloc(frag, 30000)) == [30000]
    # The merge of bpf_msg_pull_data copies to a new page and puts the old ones.
    frag = PageFrag()
    m = alloc(frag, 40000)
    assert bpf_msg_pull_data(m, 0, 40000, 0) == 0
    assert lens(alloc(frag, 30000)) == [30000]
    # A partial pop leaves the element (and its reference) in place.
    frag = PageFrag()
    m = alloc(frag, 40000)
    assert bpf_msg_pop_data(m, 32768, 7000, 0) == 0
    assert lens(alloc(frag, 30000)) == [32768 - 7232, 30000 - (32768 - 7232)]


# The sender c1 redirects to itself (key 2) after SHUT_WR: tcp_bpf_push fails with -EPIPE,
# sk_msg_free drops the message, and copied keeps the popped byte, so each call returns 1 and
# splice_to_socket retries with one byte less (bucket runs.steps.win-pop_data-redirect-*).
def test_splice_retries_after_a_failed_redirect_reuse_the_page() -> None:
    c = case(inv(PopData(0, 1), Redirect(2)), [Shutdown("c1", "SHUT_WR"), Splice("c1", 544)])
    o = sim.run(c)
    assert o.events[1].ret == 544 and o.run_count == 544
    assert run_sizes(o)[:64] == [(544 - k, 544 - k) for k in range(64)]


def test_sendfile_retry_window_after_free_or_delivery() -> None:
    inserts = (MapEntry(0, "c0"), MapEntry(1, "c1"), MapEntry(3, "p1"))
    ev = [Shutdown("c1", "SHUT_WR"), SendFile("c0", 20000)]
    fail = inv(Redirect(1))  # egress to c1, shut down: -EPIPE, the rest freed
    # All bytes of the first call freed (popped or freed after the failed redirect): reused.
    o = sim.run(case((inv(PopData(0, 100), Redirect(1)), inv()), ev, inserts=inserts))
    assert run_sizes(o) == [(20000, 20000), (19900, 19900)]
    # 100 bytes went to p1's ingress queue: the page stays held, the retry starts at 20000.
    o = sim.run(case((inv(ApplyBytes(100), Redirect(3, flags=1)), fail, inv()), ev, inserts=inserts))
    assert run_sizes(o) == [(20000, 20000), (19900, 19900), (19900, 12768)]
    # 100 bytes passed to TCP: the skb holds the page.
    o = sim.run(case((inv(ApplyBytes(100)), fail, inv()), ev, inserts=inserts))
    assert run_sizes(o) == [(20000, 20000), (19900, 19900), (19900, 12768)]
    # The pull moved page 2's bytes to a new page before 100 of them went to p1: page 2 is free.
    ev40 = [Shutdown("c1", "SHUT_WR"), SendFile("c0", 40000)]
    o = sim.run(case((inv(PullData(0, 40000), ApplyBytes(100), Redirect(3, flags=1)), fail, inv()), ev40,
                     inserts=inserts))
    assert run_sizes(o) == [(40000, 32768), (39900, 39900), (39900, 32768)]
