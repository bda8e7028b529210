"""The per-thread page frag, sk_msg_alloc and sk_msg_memcopy_from_iter (spec §2.1, §2.2;
net/core/skmsg.c).

The model gives every send that names no thread its own frag, as the kernel runner does with
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

Named sender threads (a send's `thread`, diffuzz/contract/events.py) keep one frag across their
sends, so a later send continues in the page where the last one stopped, and its bytes can
coalesce with a corked message's last element (spec §2.1).  Then who still holds a page decides
the layout, and the model follows each holder (sim/sk_msg.py `Page`):
- elements: as above;
- ingress messages (bpf_tcp_ingress moves the element and its reference): sk_msg_recvmsg puts
  an element's page once every byte of it is read (`IngressMsg.consume`); a psock torn down
  frees its queue only after an RCU grace period (sk_psock_destroy), so those become loose;
- TCP: the skbs tcp_bpf_push fills (MSG_SPLICE_PAGES takes page references), and the bytes a
  plain tcp_sendmsg copies into the same task frag (sk_page_frag); `Sock.tx_pages` keeps them.
  Under push_copies_to_task_frag (6.1.184+, sim/profile.py) tcp_bpf_push's bytes are copied into
  the task frag too (tcp_copy_to_frag), and the element's page reference is put instead.
  They are held while unread; once the receiver reads or purges its queue, the references go
  when the ACK frees the sender's copy and the read skb is freed (skb_attempt_defer_free may
  defer it to another CPU), which is timing.  The model makes them loose (`tcp_let_go`), and a
  refill that finds its page held by loose bytes only sets `PageFrag.doubt`: the layout from
  there on is not fixed by the case, and the zone (diffuzz/engine/zone.py) keeps such cases out.

Known limit: bytes handed to TCP stay held for the rest of the syscall.  The kernel drops
those references earlier only when the skbs die unread, e.g. an RST processed mid-syscall
purging the write queue of a target whose peer discarded them (tcp_write_queue_purge).
"""

from __future__ import annotations

from typing import Any

from sim.sk_msg import MAX_MSG_FRAGS, NR_MSG_FRAG_IDS, Elem, Page, SkMsg, remove_range
from sim.tcp import tcp_took

PAGE_FRAG_SIZE = 32768  # order-3 page (spec §0.4)
PAGE_FRAG_MIN_ROOM = 32  # sk_page_frag_refill(sk, pfrag) asks for 32 bytes
ENOSPC = 28


class PageFrag:
    """struct page_frag: the current page (a `Page`) and the next free offset.  `doubt`: a
    refill found the page held only by loose bytes (module docstring)."""

    __slots__ = ("doubt", "offset", "page")

    def __init__(self) -> None:
        self.page: Page | None = None
        self.offset = 0
        self.doubt = False

    def refill(self) -> None:
        """skb_page_frag_refill(32, ...): a page nobody else holds is reused from offset 0;
        otherwise keep the page while 32 bytes still fit, else take a new one."""
        page = self.page
        if page is not None and page.held == 0:
            self.offset = 0  # page_ref_count(pfrag->page) == 1
            return
        if page is not None and page.held == page.loose:
            self.doubt = True  # it may be free by now; go on as if it were still held
        if page is None or self.offset + PAGE_FRAG_MIN_ROOM > PAGE_FRAG_SIZE:
            self.page = Page()  # the old page is put; the sg elements and skbs keep theirs
            self.offset = 0


def tcp_copy_to_frag(frag: PageFrag, sk: Any, n: int, skb_room: int) -> None:
    """A tcp_sendmsg_locked without zero copy copies the n bytes it accepted into the task frag
    (sk_page_frag: current->task_frag for a TCP socket): chunk by chunk, each at most what the
    tail skb still takes (skb_room first, then size_goal per new skb: one MSS on loopback) and
    what the page has left, with sk_page_frag_refill before each chunk (so an skb that ends within
    32 bytes of the page's end moves the frag to a new page), then skb_copy_to_page_nocache at
    pfrag->offset.  The skb takes its own page reference (held until TCP lets go, sim/tcp.py)."""
    room = skb_room or sk.mss
    while n > 0:
        frag.refill()
        page = frag.page
        assert page is not None
        use = min(n, room, PAGE_FRAG_SIZE - frag.offset)
        page.held += use
        tcp_took(sk, page, use)
        frag.offset += use
        n -= use
        room = room - use or sk.mss  # a full skb: tcp_sendmsg_locked starts a new one


def sk_msg_alloc(msg: SkMsg, data: bytes, pos: int, n: int, frag: PageFrag) -> tuple[int, bool]:
    """sk_msg_alloc, with data[pos:pos+n] already where it reserves room: where the copy
    (sk_msg_memcopy_from_iter, below) puts them unless its sg.curr is stale.

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


def reserved_start(msg: SkMsg, count: int, last_len: int) -> tuple[int, int]:
    """Where sk_msg_alloc put the bytes it reserved, given the element count and last length
    before it: at the end of the old last element when it grew (coalesced), else the first new one."""
    if count and len(msg.elems[count - 1].data) > last_len:
        return count - 1, last_len
    return count, 0


def sk_msg_memcopy_from_iter(msg: SkMsg, data: bytes, pos: int, n: int, reserved: tuple[int, int],
                             kernel_bugs: set[str]) -> tuple[int, int]:
    """sk_msg_memcopy_from_iter (net/core/skmsg.c), literally: copy n bytes starting at
    sg.curr + sg.copybreak, walking forward until n bytes are copied or the walk reaches
    sg.end.  sk_msg_alloc already put data[pos:pos+n] where it reserved them (`reserved`); when
    the walk starts there, as it does unless an earlier call left curr elsewhere, nothing changes.

    Returns (error, copied): -ENOSPC when the first step already meets sg.end (nothing copied),
    else 0; and the bytes written.  The corners:
    - a corked message with 17 elements and a send that cannot coalesce: nothing is reserved, the
      copy (n = 0) steps from the last element to sg.end: -ENOSPC, curr left at the end slot; the
      next such call steps from the (empty) end slot to slot start and returns 0 (R01);
    - curr at an element whose copybreak covers it all while the bytes were reserved by
      coalescing into that element (the cork's last element after a partial push, T06): -ENOSPC;
    - a walk that starts elsewhere than the reserved bytes writes over the bytes it finds there
      and leaves the reserved bytes as the page held them (unknown here): kernel bug K4
      (docs/kernel-notes.md), copied on purpose and named in `kernel_bugs`."""
    elems = msg.elems
    count = len(elems)
    i = msg.curr
    cb = msg.copybreak
    if cb >= (len(elems[i].data) if i < count else 0):
        cb = 0
        i = (i + 1) % NR_MSG_FRAG_IDS
        if i == count:
            msg.curr, msg.copybreak = i, 0
            return -ENOSPC, 0
    if n == 0:
        msg.curr, msg.copybreak = i, cb
        return 0, 0
    if (i, cb) == reserved:
        msg.curr = count - 1
        msg.copybreak = len(elems[-1].data)
        return 0, n
    kernel_bugs.add("K4")
    _unwritten(msg, reserved)
    written = 0
    while True:
        if i >= count:  # a free slot: length 0, a copy of nothing
            cb = 0
            i = (i + 1) % NR_MSG_FRAG_IDS
            if i == count:
                break
            continue
        e = elems[i]
        copy = min(len(e.data) - cb, n - written)
        src = pos + written
        e.data = e.data[:cb] + data[src : src + copy] + e.data[cb + copy :]
        e.unk = remove_range(e.unk, cb, cb + copy)
        cb += copy
        written += copy
        if written == n:
            break
        cb = 0
        i = (i + 1) % NR_MSG_FRAG_IDS
        if i == count:
            break
    msg.curr, msg.copybreak = i, cb
    return 0, written


def _unwritten(msg: SkMsg, reserved: tuple[int, int]) -> None:
    """The bytes sk_msg_alloc reserved from `reserved` to the end were not copied: they hold
    whatever the page held (uninitialised, as pushed bytes are, spec §6.5)."""
    idx, off = reserved
    for e in msg.elems[idx:]:
        unk = [(s, min(t, off)) for s, t in e.unk or () if s < off]
        if unk and unk[-1][1] == off:
            unk[-1] = (unk[-1][0], len(e.data))
        else:
            unk.append((off, len(e.data)))
        e.unk = unk
        off = 0
