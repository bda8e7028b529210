"""struct sk_msg: the message a sendmsg builds and the program sees (include/linux/skmsg.h).

The ring of `MAX_MSG_FRAGS` scatterlist slots is kept as a Python list in ring order
(slot `sg.start` first).  Ring indices themselves are not modelled: only the element
count (`sk_msg_elem_used`) is observable (spec §1.4).

Element bytes are `bytes` slices; bytes the kernel leaves uninitialised (pushed bytes,
spec §6.5) are carried as `unk`, a sorted list of [start, end) ranges relative to the
element, or None when every byte is known.  No per-byte Python loops.
"""

from __future__ import annotations

MAX_MSG_FRAGS = 17  # MAX_SKB_FRAGS on 6.18 (spec §0.4)
NR_MSG_FRAG_IDS = MAX_MSG_FRAGS + 1  # ring slots: one more than the elements it may hold

Ranges = list[tuple[int, int]] | None


def clip_ranges(unk: Ranges, a: int, b: int) -> Ranges:
    """The unknown ranges of bytes [a, b), shifted so that a becomes 0."""
    if not unk:
        return None
    out = [(max(s, a) - a, min(e, b) - a) for s, e in unk if s < b and e > a]
    return out or None


def shift_ranges(unk: Ranges, by: int) -> list[tuple[int, int]]:
    return [(s + by, e + by) for s, e in unk] if unk else []


def add_ranges(dst: list[tuple[int, int]], unk: Ranges, base: int) -> None:
    """Append `unk` (relative to base) to the sorted list dst, merging touching ranges."""
    if not unk:
        return
    for s, e in unk:
        s += base
        e += base
        if dst and dst[-1][1] >= s:
            dst[-1] = (dst[-1][0], max(dst[-1][1], e))
        else:
            dst.append((s, e))


def remove_range(unk: Ranges, a: int, b: int) -> Ranges:
    """unk minus [a, b): used when the program writes over uninitialised bytes."""
    if not unk:
        return None
    out: list[tuple[int, int]] = []
    for s, e in unk:
        if e <= a or s >= b:
            out.append((s, e))
            continue
        if s < a:
            out.append((s, a))
        if e > b:
            out.append((b, e))
    return out or None


class Page:
    """A page-frag page (struct page), kept for two facts: its identity (coalescing in
    sk_msg_alloc, spec §2.1) and whether anyone besides the frag still holds it.

    skb_page_frag_refill (net/core/sock.c) starts a page again at offset 0 when
    page_ref_count(page) == 1, i.e. when the frag's own reference is the last one.  The
    other references are the scatterlist elements' (get_page in sk_msg_alloc and in the
    split of bpf_msg_pop_data / bpf_msg_push_data; put_page in sk_msg_free_elem,
    sk_msg_shift_left and the copy/merge paths of pop, push and pull), the skbs' (TCP takes
    its own reference for each chunk tcp_bpf_push hands it with MSG_SPLICE_PAGES) and the
    ingress messages' (bpf_tcp_ingress moves the element's reference).

    `held` counts the bytes of this page that an element, an skb or an ingress message still
    refers to.  A scatterlist element holds its reference exactly while it has bytes (every
    put_page site above empties or retires the element), so "held == 0" is the kernel's
    "page_ref_count == 1".  Bytes handed to TCP or to an ingress queue are never subtracted:
    within one syscall (the life of a fresh thread's frag, spec §2.2) the events of a case
    never read them, so their references stay.  A named thread's frag lives across sends: then
    a receiver that consumes them lets go of them, exactly for ingress messages
    (sk_msg_recvmsg puts an element's page once it is read), and loosely for TCP (see below).

    With named sender threads (sim/page_frag.py) a page outlives its send, and some holders let
    go at a time the kernel does not fix: `loose` counts the held bytes whose holder may already
    be gone (an skb whose receiver read or purged its queue since, waiting only for its ACK or
    a deferred free; the ingress messages of a psock destroyed after an RCU grace period).
    """

    __slots__ = ("held", "loose")

    def __init__(self) -> None:
        self.held = 0
        self.loose = 0


class Elem:
    """One used scatterlist slot: its bytes, their unknown ranges, the page it lives in
    (a page-frag `Page`, see there) and the sg.copy bit."""

    __slots__ = ("copy", "data", "page", "pend", "unk")

    def __init__(self, data: bytes, unk: Ranges = None, page: Page | None = None, pend: int = 0,
                 copy: bool = False):
        self.data = data
        self.unk = unk
        self.page = page  # the page-frag page, or None for pages from alloc_pages (push/pop/pull)
        self.pend = pend  # offset in `page` just past this element's bytes
        self.copy = copy  # sg.copy: set only by 6.1's sendpage (sim/sendpage.py); never on >= 6.5 (spec §1.3)

    def slice(self, a: int, b: int) -> Elem:
        """Bytes [a, b) of this element, still in the same page."""
        return Elem(self.data[a:b], clip_ranges(self.unk, a, b), self.page, self.pend - len(self.data) + b, self.copy)

    def put(self, n: int) -> None:
        """n of this element's bytes no longer refer to its page: trimmed by a pop, or the
        element freed or copied to a new page (put_page).  See `Page`."""
        if self.page is not None:
            self.page.held -= n


def concat(parts: list[Elem]) -> Elem:
    """One element on a freshly allocated page holding parts in order (the merge/copy
    paths of pull, push and pop allocate with alloc_pages, not the page frag).  The callers
    put the page references of the elements they replace (`Elem.put`)."""
    unk: list[tuple[int, int]] = []
    pos = 0
    for p in parts:
        add_ranges(unk, p.unk, pos)
        pos += len(p.data)
    return Elem(b"".join(p.data for p in parts), unk or None)


class SkMsg:
    """struct sk_msg: elements plus the metadata the helpers set (spec §1.3).

    Metadata is not reset between program runs on the same struct (spec §1.5).

    `curr` and `copybreak` are sg.curr and sg.copybreak: where sk_msg_memcopy_from_iter writes
    next.  `curr` is a ring position relative to sg.start (0 .. NR_MSG_FRAG_IDS - 1: the
    elements are 0 .. len - 1, the free slots after them), so it moves back when elements leave
    the front and stays put when they are added at the end, as the slot index does."""

    __slots__ = ("apply_bytes", "copybreak", "cork_bytes", "curr", "elems", "flags", "grown", "size", "sk_redir")

    def __init__(self) -> None:
        self.elems: list[Elem] = []
        self.size = 0
        self.apply_bytes = 0  # u32
        self.cork_bytes = 0  # u32
        self.flags = 0  # u64: flags of the last successful redirect helper
        self.sk_redir: object | None = None  # the target socket of that redirect
        self.curr = 0
        self.copybreak = 0
        # Not a kernel field: bytes the program runs on this struct added (push) or removed (pop)
        # since it was last freed, so the DROP branch can tell when its arithmetic is K3's.
        self.grown = 0

    def full(self) -> bool:
        """sk_msg_full: every one of the MAX_MSG_FRAGS usable slots is taken."""
        return len(self.elems) >= MAX_MSG_FRAGS

    def sk_msg_free(self) -> int:
        """sk_msg_free / __sk_msg_free: drop every byte and re-init the struct (metadata
        zeroed too: sk_msg_init), returning the bytes freed."""
        freed = self.size
        for e in self.elems:
            e.put(len(e.data))  # sk_msg_free_elem: put_page
        self.elems = []
        self.size = 0
        self.curr = 0
        self.copybreak = 0
        self.apply_bytes = 0
        self.cork_bytes = 0
        self.flags = 0
        self.sk_redir = None
        self.grown = 0
        return freed

    def consume_front(self, n: int) -> list[Elem]:
        """Remove n bytes from the front; return them as element slices, in order."""
        out: list[Elem] = []
        elems = self.elems
        while n > 0 and elems:
            e = elems[0]
            ln = len(e.data)
            if ln <= n:
                out.append(elems.pop(0))
                self.curr = (self.curr - 1) % NR_MSG_FRAG_IDS  # sg.start moved past the slot
                n -= ln
                self.size -= ln
            else:
                out.append(e.slice(0, n))
                rest = e.slice(n, ln)
                elems[0] = rest
                self.size -= n
                n = 0
        return out

    def trim(self, size: int) -> None:
        """sk_msg_trim(msg, size): cut the message back to size bytes from the end (the page
        frag's offset stays where it was), then move curr back inside it."""
        cut = self.size - size
        if cut <= 0:
            return
        self.size = size
        elems = self.elems
        shortened = False
        while cut:
            e = elems[-1]
            ln = len(e.data)
            if cut >= ln:
                e.put(ln)
                elems.pop()
                cut -= ln
            else:
                elems[-1] = e.slice(0, ln - cut)
                e.put(cut)
                cut = 0
                shortened = True
        count = len(elems)
        if shortened and self.curr == count - 1 and self.copybreak > len(elems[-1].data):
            self.copybreak = len(elems[-1].data)
        if not self.size:
            self.curr = self.copybreak = 0
        elif self.curr >= count:
            self.curr = count - 1
            self.copybreak = len(elems[-1].data)

    def reset_curr(self) -> None:
        """sk_msg_reset_curr (net/core/filter.c): after a pull, and a push or pop of > 0
        bytes, the next copy goes after the last byte."""
        if self.elems:
            self.curr = len(self.elems) - 1
            self.copybreak = len(self.elems[-1].data)
        else:
            self.curr = self.copybreak = 0

    def first_len(self) -> int:
        """data_end - data as sk_msg_compute_data_pointers leaves it: the first element,
        or nothing when that element is a copy (sg.copy) element or the ring is empty."""
        if not self.elems:
            return 0
        e = self.elems[0]
        return 0 if e.copy else len(e.data)
