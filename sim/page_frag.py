"""The per-thread page frag and sk_msg_alloc (spec §2.1, §2.2; net/core/skmsg.c).

The model gives every send syscall its own frag, as the kernel runner does with
`fresh_thread` (spec §2.2): a new thread's `current->task_frag` starts empty, so a new
message of n bytes gets elements [min(n, 32768), 32768, ..., rest], and bytes appended by a
later syscall never coalesce with an earlier one.  Within one syscall (ENOSPC iterations,
the batches of sendfile/splice) the frag carries on.

skb_page_frag_refill reuses a page from offset 0 when nobody else holds it
(page_ref_count == 1; `Page.held == 0` here).  Inside one syscall that happens when every
byte taken from the page so far was freed rather than sent: a redirect or push error, a
DROP, or pops and pulls that left nothing of it, and then a later tcp_bpf_sendmsg call of
the same sendfile/splice (splice_to_socket offers the rest of a batch again after a
partial count) or a later iteration of the sendmsg loop allocates again.  Without
fresh_thread the real layout also depends on earlier sends of the worker thread, so
windows are reported as None then (docs/execution.md), while this pinned layout is still
used for the bytes.

Known limit: bytes handed to TCP stay held for the rest of the syscall.  The kernel drops
those references earlier only when the skbs die unread, e.g. an RST processed mid-syscall
purging the write queue of a target whose peer discarded them (tcp_write_queue_purge).
"""

from __future__ import annotations

from sim.sk_msg import MAX_MSG_FRAGS, Elem, Page, SkMsg

PAGE_FRAG_SIZE = 32768  # order-3 page (spec §0.4)
PAGE_FRAG_MIN_ROOM = 32  # sk_page_frag_refill(sk, pfrag) asks for 32 bytes


class PageFrag:
    """struct page_frag: the current page (a `Page`) and the next free offset."""

    __slots__ = ("offset", "page")

    def __init__(self) -> None:
        self.page: Page | None = None
        self.offset = 0

    def refill(self) -> None:
        """skb_page_frag_refill(32, ...): a page nobody else holds is reused from offset 0;
        otherwise keep the page while 32 bytes still fit, else take a new one."""
        page = self.page
        if page is not None and page.held == 0:
            self.offset = 0  # page_ref_count(pfrag->page) == 1
        elif page is None or self.offset + PAGE_FRAG_MIN_ROOM > PAGE_FRAG_SIZE:
            self.page = Page()  # the old page is put; the sg elements and skbs keep theirs
            self.offset = 0


def sk_msg_alloc(msg: SkMsg, data: bytes, pos: int, n: int, frag: PageFrag) -> tuple[int, bool]:
    """sk_msg_alloc + sk_msg_memcopy_from_iter: append data[pos:pos+n] to msg.

    Returns (bytes taken, enospc).  On ENOSPC (17 elements and no room to coalesce) the
    bytes reserved so far stay (spec §2.3).  Coalescing needs the last element to end
    exactly where the frag continues in the same page; sk_msg_try_coalesce_ok with
    elem_first_coalesce = sg.end - 1 never lets a fresh (empty) message coalesce.
    """
    got = 0
    elems = msg.elems
    while got < n:
        frag.refill()
        page = frag.page
        assert page is not None  # refill always leaves a page
        use = min(n - got, PAGE_FRAG_SIZE - frag.offset)
        chunk = data[pos + got : pos + got + use]
        last = elems[-1] if elems else None
        if last is not None and last.page is page and last.pend == frag.offset:
            last.data += chunk
            last.pend += use
        else:
            if len(elems) >= MAX_MSG_FRAGS:
                return got, True
            elems.append(Elem(chunk, None, page, frag.offset + use))  # get_page(pfrag->page)
        page.held += use
        frag.offset += use
        msg.size += use
        got += use
    return got, False
