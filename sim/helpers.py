"""The bpf_msg_* helpers (net/core/filter.c) and the case's verdict program (spec §6).

Arguments arrive as 64-bit registers; the kernel prototypes take start/len/bytes as u32
(cut here with & U32) and flags as u64.  Every helper returns what the kernel returns:
0 or -errno for push/pop/pull, 0 for apply/cork, SK_PASS/SK_DROP for the redirects.
"""

from __future__ import annotations

from socket import AF_INET6
from typing import TYPE_CHECKING

from diffuzz.contract.case import (
    LAST_RC,
    WRITE_MAX_OFFSET,
    ApplyBytes,
    CorkBytes,
    PopData,
    PullData,
    PushData,
    Redirect,
    Write,
)
from diffuzz.contract.outcome import MAX_RUN_RECORDS, RUN_HEAD, Data, Run, RunContext, StepRecord
from sim.sk_msg import MAX_MSG_FRAGS, Elem, SkMsg, clip_ranges, concat, remove_range
from sim.tcp import CLOSE

if TYPE_CHECKING:
    from sim.tcp import Sock
    from sim.world import World

U32 = 0xFFFF_FFFF
EINVAL = 22
ENOMEM = 12
SK_DROP = 0
SK_PASS = 1
BPF_F_INGRESS = 1
# A send whose runs keep the message from ever emptying (apply_bytes(1) + push_data(0, 1) on
# every run) loops in the kernel for ever (tcp_bpf_send_verdict's more_data loop); the model
# stops such a loop (sim/tcp_bpf.py) and reports a hang, which compare.py matches against a
# kernel hang.  MAX_RUNS bounds a whole case as a last resort.
MAX_RUNS = 1 << 24


class ModelHang(Exception):
    """The case does not terminate on the model (see MAX_RUNS)."""


# alloc_pages(get_order(n)) fails above MAX_PAGE_ORDER 10: 4 MiB (spec §6.4, §6.5).
MAX_ALLOC = 4 << 20


def _find(elems: list[Elem], start: int) -> tuple[int, int]:
    """The element holding logical offset `start` and that element's offset, as the
    helpers' "find the starting scatterlist element" loops do; (len(elems), size) when
    start is at or past the end."""
    off = 0
    for i, e in enumerate(elems):
        ln = len(e.data)
        if start < off + ln:
            return i, off
        off += ln
    return len(elems), off


def bpf_msg_apply_bytes(msg: SkMsg, nbytes: int) -> int:
    """§6.1: the u32 is stored; it takes effect through sk_psock_msg_verdict (§4.1)."""
    msg.apply_bytes = nbytes & U32
    return 0


def bpf_msg_cork_bytes(msg: SkMsg, nbytes: int) -> int:
    """§6.2: the u32 is stored; tcp_bpf_send_verdict reads it (§4.2)."""
    msg.cork_bytes = nbytes & U32
    return 0


def bpf_msg_redirect(world: World, msg: SkMsg, key: int, flags: int) -> int:
    """bpf_msg_redirect_map / bpf_msg_redirect_hash (§6.3): on failure SK_DROP and the
    message (and any earlier sk_redir) untouched (§1.5, W23)."""
    if flags & ~BPF_F_INGRESS:
        return SK_DROP
    sk = world.map.lookup(key & U32)
    # sock_map_redirect_allowed: only a TCP listener is refused; sockets here never listen.
    if sk is None:
        return SK_DROP
    msg.flags = flags
    msg.sk_redir = sk
    return SK_PASS


def bpf_msg_pull_data(msg: SkMsg, start: int, end: int, flags: int) -> int:
    """§6.4.  On success the window is [start, end) (the caller sets it)."""
    start &= U32
    end &= U32
    if flags or end <= start:
        return -EINVAL
    elems = msg.elems
    i, off = _find(elems, start)
    if i == len(elems):
        return -EINVAL  # start >= size
    total = end - off  # bytes_sg_total: from the start of element i to end
    if not elems[i].copy and total <= len(elems[i].data):
        return 0  # already linear: nothing moves
    copy = 0
    j = i
    while j < len(elems):
        copy += len(elems[j].data)
        j += 1
        if total <= copy:
            break
    if total > copy:
        return -EINVAL  # end > size
    if copy > MAX_ALLOC:
        return -ENOMEM
    for e in elems[i:j]:
        e.put(len(e.data))  # the merged elements' pages are put once copied
    elems[i:j] = [concat(elems[i:j])]  # whole elements merged into one new page, copy bit clear
    return 0


def bpf_msg_push_data(msg: SkMsg, start: int, ln: int, flags: int) -> int:
    """§6.5: insert ln uninitialised bytes at start; layout per the table of §6.5."""
    start &= U32
    ln &= U32
    if flags:
        return -EINVAL
    if ln == 0:
        return 0
    if start > msg.size:
        return -EINVAL
    elems = msg.elems
    i, off = _find(elems, start)
    space = MAX_MSG_FRAGS - len(elems)
    copy = 0
    if not space or (space == 1 and start != off):
        # copy = msg->sg.data[i].length: the empty slot past the end when appending.
        copy = len(elems[i].data) if i < len(elems) else 0
    if (copy + ln) & U32 < copy:
        return -EINVAL  # u32 wrap of copy + len (7.2 / 6.12.97 / 6.1.178 fix)
    if copy + ln > MAX_ALLOC:
        return -ENOMEM
    new = Elem(bytes(ln), [(0, ln)])  # only now: ln may be near 4 GiB until the checks above refuse it
    if copy:
        # The copy path: e_i becomes e_i[:k] + NEW + e_i[k:] in one new element.
        e = elems[i]
        k = start - off
        elems[i] = concat([e.slice(0, k), new, e.slice(k, len(e.data))])
        e.put(len(e.data))  # put_page of the element copied into the new page
    elif i == len(elems):
        # Append (start == size).  With a full ring the kernel overflows the ring
        # (spec §6.5 last row, undefined); the model appends an 18th element.
        elems.append(new)
    elif start == off:
        elems.insert(i, new)
    else:
        e = elems[i]
        k = start - off
        elems[i : i + 1] = [e.slice(0, k), new, e.slice(k, len(e.data))]
    msg.size += ln
    return 0


def bpf_msg_pop_data(msg: SkMsg, start: int, ln: int, flags: int) -> int:
    """§6.6: remove [start, start+len); the bound is checked in 64 bits (6.12.97 fix)."""
    start &= U32
    ln &= U32
    if flags:
        return -EINVAL
    if ln == 0:
        return 0
    elems = msg.elems
    i, off = _find(elems, start)
    if i == len(elems) or start + ln > msg.size:
        return -EINVAL
    space = MAX_MSG_FRAGS - len(elems)
    pop = ln
    if start != off:
        e = elems[i]
        elen = len(e.data)
        a = start - off
        b = elen - pop - a
        if b > 0:
            if space:
                # e_i keeps [0, a); the tail [a+pop, len) moves to its own slot (same page,
                # get_page for it): only the popped bytes leave the page.
                elems[i : i + 1] = [e.slice(0, a), e.slice(a + pop, elen)]
                e.put(pop)
            else:
                elems[i] = concat([e.slice(0, a), e.slice(a + pop, elen)])
                e.put(elen)  # copied to a new page, put_page(orig)
            pop = 0
        else:
            pop -= elen - a
            elems[i] = e.slice(0, a)
            e.put(elen - a)
        i += 1
    while pop:
        e = elems[i]
        elen = len(e.data)
        if pop < elen:
            elems[i] = e.slice(pop, elen)
            e.put(pop)
            pop = 0
        else:
            pop -= elen
            del elems[i]
            e.put(elen)  # sk_msg_shift_left: put_page
    msg.size -= ln
    return 0


def _write(msg: SkMsg, pos: int, data: bytes) -> None:
    """A direct store by the program at logical offset pos (spec §6.0): the bytes become
    known."""
    off = 0
    end = pos + len(data)
    for e in msg.elems:
        ln = len(e.data)
        if off + ln > pos and off < end:
            a = max(pos, off) - off
            b = min(end, off + ln) - off
            src = data[a + off - pos : b + off - pos]
            e.data = e.data[:a] + src + e.data[b:]
            e.unk = remove_range(e.unk, a, b)
        off += ln
        if off >= end:
            break


def _head(msg: SkMsg, win_len: int) -> Data:
    """The first RUN_HEAD bytes of [data, data_end) on entry: the first element's (spec §4.1),
    with its never-written pushed bytes unknown."""
    if not win_len:
        return Data()
    e = msg.elems[0]
    n = min(RUN_HEAD, win_len)
    return Data(e.data[:n], tuple(clip_ranges(e.unk, 0, n) or ()))


def bpf_prog_run(world: World, sk: Sock, msg: SkMsg) -> int:
    """Run the case's program once on msg (the next invocation of the global run counter)
    and record it (docs/execution.md "Program runs").  Returns the u32 the program returned."""
    idx = world.run_count
    if idx >= MAX_RUNS:
        raise ModelHang(f"more than {MAX_RUNS} program runs: the send loop does not end")
    world.run_count = idx + 1
    inv = world.program[min(idx, world.last_prog)]
    record = idx < MAX_RUN_RECORDS
    pinned = world.pinned
    win_start = 0
    win_len = msg.first_len()  # sk_msg_compute_data_pointers (spec §4.1)
    known = pinned
    size_in = msg.size
    win_in = win_len if known else None
    head = _head(msg, win_len) if known and record else None
    recs: list[StepRecord] = []
    rc = 0
    for step in inv.steps:
        t = type(step)
        if t is Write:
            data = step.data
            # docs/execution.md: the program stores only at offsets <= WRITE_MAX_OFFSET.
            if step.offset <= WRITE_MAX_OFFSET and step.offset + len(data) <= win_len:
                _write(msg, win_start + step.offset, data)
                rc = 0
            else:
                rc = -1
        elif t is Redirect:
            rc = bpf_msg_redirect(world, msg, step.key, step.flags)
        elif t is ApplyBytes:
            msg.apply_bytes = step.bytes & U32  # bpf_msg_apply_bytes, inlined: the hot step
            rc = 0
        elif t is CorkBytes:
            msg.cork_bytes = step.bytes & U32  # bpf_msg_cork_bytes, inlined
            rc = 0
        elif t is PushData:
            rc = bpf_msg_push_data(msg, step.start, step.len, step.flags)
            if rc == 0 and step.len & U32:
                msg.reset_curr()
                win_start, win_len, known = 0, msg.first_len(), pinned
                sk.acct[1] += step.len & U32
        elif t is PopData:
            rc = bpf_msg_pop_data(msg, step.start, step.len, step.flags)
            if rc == 0 and step.len & U32:
                msg.reset_curr()
                win_start, win_len, known = 0, msg.first_len(), pinned
                sk.acct[2] += step.len & U32
        elif t is PullData:
            rc = bpf_msg_pull_data(msg, step.start, step.end, step.flags)
            if rc == 0:
                msg.reset_curr()
                win_start = step.start & U32
                win_len = (step.end & U32) - win_start
                known = True
        if record:
            recs.append(StepRecord(rc, win_len if known else None))
        if world.audit is not None:
            world.audit.append((msg.size, sum(len(e.data) for e in msg.elems), len(msg.elems)))
    verdict = inv.verdict
    if verdict == LAST_RC:
        verdict = rc & U32 if inv.steps else 0
    if record:
        closed = sk.state == CLOSE
        key = (sk.name, world.task, closed)
        ctx = world.ctx_cache.get(key)
        if ctx is None:
            ctx = world.ctx_cache[key] = RunContext(
                world.family, sk_msg_local(sk.name, world.family, closed), sk.peer.name, world.task  # type: ignore[union-attr]
            )
        world.runs.append(Run(sk.name, size_in, win_in, tuple(recs), msg.size, verdict, ctx, head))
    return verdict


def sk_msg_local(name: str, family: int, closed: bool) -> str:
    """The endpoint sk_msg_md's local_ip/local_port name (docs/execution.md, "Program runs").

    local_port is inet_num.  A TCP socket that reaches TCP_CLOSE (a reset, tcp_done) goes through
    tcp_set_state -> inet_put_port, which releases the bound port and zeroes inet_num, while
    the local address stays.  The program then reads port 0, which names no endpoint and is
    reported raw: "?127.0.0.1:0" / "?[::1]:0" (docs/kernel-notes.md N2).
    """
    if not closed:
        return name
    return "?[::1]:0" if family == AF_INET6 else "?127.0.0.1:0"
