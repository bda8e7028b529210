"""net/ipv4/tcp_bpf.c: the sendmsg/verdict loop, push, ingress, redirect delivery and the
receive side of a socket in a sockmap (spec §3, §4, §5, §7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.helpers import SK_PASS, U32, ModelHang, bpf_prog_run
from sim.page_frag import reserved_start, sk_msg_alloc, sk_msg_memcopy_from_iter, tcp_copy_to_frag
from sim.psock import (
    SK_DROP_EVAL,
    SK_NONE,
    SK_PASS_EVAL,
    SK_REDIRECT,
    IngressMsg,
    Psock,
    sk_msg_apply_bytes,
    sk_psock_queue_msg,
)
from sim.sk_msg import NR_MSG_FRAG_IDS, SkMsg, add_ranges, clip_ranges
from sim.tcp import (
    EAGAIN,
    EPIPE,
    MSG_MORE,
    Sock,
    release_sock,
    sk_stream_error,
    tcp_recvmsg,
    tcp_sendmsg_locked,
    tcp_took,
)

if TYPE_CHECKING:
    from sim.world import World

EACCES = 13
EFAULT = 14
ENOSPC = 28


def s32(x: int) -> int:
    x &= U32
    return x - (1 << 32) if x & 0x8000_0000 else x


def _note_k3(w: World, msg: SkMsg) -> None:
    """The error branches subtract sk_msg_free()'s count, pushed bytes included, from copied:
    kernel bug K3 (as in the DROP branch) whenever programs grew or shrank this message."""
    if msg.grown:
        w.kernel_bugs.add("K3")


def sk_psock_msg_verdict(w: World, sk: Sock, psock: Psock, msg: SkMsg) -> int:
    """§4.1: run the program; only SK_PASS passes (§6.8), and a PASS with sk_redir on the
    struct redirects.  apply_bytes is copied for every verdict.

    Profile behaviour stale_sk_redir (sim/profile.py): where the kernel has it, a target an
    earlier run left on the struct redirects too (W10, W23); where it does not (6.18.44-fc-v1045),
    only a target this run set counts, as if msg->sk_redir were cleared before the run."""
    if not w.stale_sk_redir:
        msg.sk_redir = None
    rc = bpf_prog_run(w, sk, msg)
    if rc == SK_PASS:
        verdict = SK_REDIRECT if msg.sk_redir is not None else SK_PASS_EVAL
    else:
        verdict = SK_DROP_EVAL
    psock.apply_bytes = msg.apply_bytes
    if verdict == SK_REDIRECT:
        psock.sk_redir = msg.sk_redir  # type: ignore[assignment]
        psock.redir_ingress = bool(msg.flags & 1)
    return verdict


def tcp_bpf_push(w: World, sk: Sock, msg: SkMsg, apply_bytes: int, flags: int) -> int:
    """§5.1: hand the first apply_bytes bytes (all when 0) to sk's TCP, element by element.
    An empty message still makes one 0-byte tcp_sendmsg_locked call (its error counts).

    Profile behaviour push_copies_to_task_frag (sim/profile.py, 6.1.184+): MSG_SPLICE_PAGES
    means nothing to that kernel's tcp_sendmsg_locked, so it copies the element's bytes into
    the sending thread's task frag (also for an egress target: `current` is the sender) while
    the element still holds its page, and tcp_bpf_push then puts the element's reference.
    Elsewhere TCP takes a reference to the element's page and the frag stays where it was."""
    apply = apply_bytes != 0
    elems = msg.elems
    if not elems:
        r = tcp_sendmsg_locked(w.sig, sk, b"", None, flags)
        return r if r < 0 else 0
    while True:
        e = elems[0]
        ln = len(e.data)
        size = apply_bytes if apply and apply_bytes < ln else ln
        skb_room = sk.wq.tail_room(sk.mss)
        if size == ln:
            r = tcp_sendmsg_locked(w.sig, sk, e.data, e.unk, flags)
        else:
            # An apply boundary cuts the element: MSG_MORE holds the segment back (§5.1).
            r = tcp_sendmsg_locked(w.sig, sk, e.data[:size], clip_ranges(e.unk, 0, size), flags | MSG_MORE)
        if r <= 0:
            return r
        if w.push_copies:
            tcp_copy_to_frag(w.frag, sk, r, skb_room)
            e.put(r)  # the pushed bytes no longer refer to the element's page (put_page once it is empty)
        else:
            tcp_took(sk, e.page, r)
        msg.size -= r
        if apply:
            apply_bytes -= r
        if r == ln:
            elems.pop(0)
            msg.curr = (msg.curr - 1) % NR_MSG_FRAG_IDS  # sg.start moved past the slot
            if not elems:
                break
        else:
            elems[0] = e.slice(r, ln)
        if apply and not apply_bytes:
            break
    return 0


def bpf_tcp_ingress(w: World, sk: Sock, psock: Psock, msg: SkMsg, apply_bytes: int) -> int:
    """§5.2: move min(apply_bytes, size) bytes (all when 0) into a new message on sk's
    ingress_msg.  An empty message is queued as an empty message."""
    n = min(apply_bytes, msg.size) if apply_bytes else msg.size
    parts = msg.consume_front(n)
    unk: list[tuple[int, int]] = []
    pos = 0
    for p in parts:
        add_ranges(unk, p.unk, pos)
        pos += len(p.data)
    data = parts[0].data if len(parts) == 1 else b"".join(p.data for p in parts)
    sk_psock_queue_msg(psock, IngressMsg(data, unk, [[p.page, len(p.data), len(p.data)] for p in parts if p.data]))
    return 0


def cork_account(psock: Psock, size: int, enospc: bool) -> bool:
    """The cork bookkeeping of both send paths (tcp_bpf_sendmsg, 6.1's tcp_bpf_sendpage), with
    cork_bytes set: True when the message waits in the cork (counted as sent), False when the
    cork is complete (or the ring full) and the program runs again."""
    if size > psock.cork_bytes:
        psock.cork_bytes = 0
    else:
        psock.cork_bytes -= size
    if psock.cork_bytes and not enospc:
        return True
    psock.eval = SK_NONE  # all cork bytes are here: run the program again
    psock.cork_bytes = 0
    return False


def tcp_bpf_sendmsg_redir(w: World, sk: Sock, ingress: bool, msg: SkMsg, nbytes: int, flags: int) -> int:
    """§5.3: deliver to the redirect target; -EPIPE when it has no psock (removed, closed)."""
    psock = sk.psock
    if psock is None:
        return -EPIPE
    if ingress:
        return bpf_tcp_ingress(w, sk, psock, msg, nbytes)
    ret = tcp_bpf_push(w, sk, msg, nbytes, flags)
    # tcp_bpf_push_locked holds the target's lock only around this push: an RST that its
    # segments provoked is processed here, before the next run (whose push then fails in
    # sk_stream_wait_connect).
    release_sock(sk)
    return ret


def tcp_bpf_send_verdict(w: World, sk: Sock, psock: Psock, msg: SkMsg, copied: int, flags: int) -> tuple[int, int]:
    """§4.2, literally.  Returns (ret, copied).

    One shortcut, exact by construction: once the program is in its last step list (which
    repeats for ever, Case.invocation), past the recorded runs, and that list only sets
    metadata (apply, cork, redirect: nothing that reads or changes the bytes), every further
    run in this loop sets the same metadata and returns the same verdict.  A run of k such
    re-runs that each deliver apply_bytes bytes is then the same as one delivery of k *
    apply_bytes bytes under that verdict: the same bytes reach the same queue (ingress
    message boundaries are not observable, §7.2) and tcp_bpf_push cuts the same elements.
    Those k runs are counted, not executed one by one.
    """
    enospc = msg.full()  # measured once, on entry
    delta = 0
    ff = False  # the last run in this call was a stable, unrecorded, metadata-only run
    ff_eval = SK_NONE
    ff_target: Sock | None = None
    ff_ingress = False
    loops = 0
    limit = 4 * msg.size + 4096  # more runs than this: the loop cannot end (sim/helpers.py MAX_RUNS)
    acct = sk.acct
    while True:
        if psock.eval == SK_NONE:
            k = 0
            if ff and msg.apply_bytes:
                a = msg.apply_bytes
                size = msg.size
                k = (size - 1) // a  # runs that each send a bytes and leave some behind
                c = msg.cork_bytes
                if c and not enospc:
                    k = min(k, (size - c) // a + 1) if c <= size else 0  # stop before a run that corks
            if k > 0:
                w.run_count += k
                psock.eval = ff_eval
                psock.apply_bytes = k * msg.apply_bytes
                if ff_eval == SK_REDIRECT:
                    psock.sk_redir = ff_target
                    psock.redir_ingress = ff_ingress
                delta = 0
            else:
                loops += 1
                if loops > limit:
                    raise ModelHang("the more_data loop of tcp_bpf_send_verdict does not end (the runs keep the "
                                    "message from emptying)")
                before = msg.size
                idx = w.run_count
                psock.eval = sk_psock_msg_verdict(w, sk, psock, msg)
                delta = (before - msg.size) & U32  # u32: wraps "negative" after a push (§4.3)
                msg.grown += msg.size - before
                ff = w.ff_ok and idx >= w.ff_from and psock.eval != SK_DROP_EVAL
                ff_eval = psock.eval
                ff_target = psock.sk_redir
                ff_ingress = psock.redir_ingress
        # A cork request wins over the verdict (§4.5, W26); checked even without a run.
        if msg.cork_bytes and msg.cork_bytes > msg.size and not enospc:
            psock.cork_bytes = msg.cork_bytes - msg.size
            psock.cork = msg  # memcpy into psock->cork: metadata travels along (§1.5)
            return 0, copied
        tosend = msg.size
        if psock.apply_bytes and psock.apply_bytes < tosend:
            tosend = psock.apply_bytes
        ev = psock.eval
        if ev == SK_PASS_EVAL:
            origsize = msg.size
            ret = tcp_bpf_push(w, sk, msg, tosend, flags)
            acct[3] += origsize - msg.size
            if ret:
                _note_k3(w, msg)
                freed = msg.sk_msg_free()
                acct[4] += freed
                copied -= freed  # eval stays PASS, apply not consumed (sticky, §4.5)
            else:
                sk_msg_apply_bytes(psock, tosend)
        elif ev == SK_REDIRECT:
            target = psock.sk_redir
            ingress = psock.redir_ingress
            sk_msg_apply_bytes(psock, tosend)
            if not psock.apply_bytes:
                psock.eval = SK_NONE  # reset BEFORE the delivery (W17)
                psock.sk_redir = None
            cork = psock.cork is not None  # msg is the cork struct
            if cork:
                psock.cork = None
            assert target is not None
            origsize = msg.size
            # The kernel drops the sender's lock around the redirect (release_sock before
            # tcp_bpf_sendmsg_redir): an RST waiting in its backlog is processed here, in the
            # middle of the syscall, not when it ends.  Later runs see the socket reset.
            release_sock(sk)
            ret = tcp_bpf_sendmsg_redir(w, target, ingress, msg, tosend, flags)
            acct[3] += origsize - msg.size
            if ret < 0:
                if not cork:
                    _note_k3(w, msg)
                freed = msg.sk_msg_free()
                acct[4] += freed
                if not cork:
                    copied -= freed
            if cork:
                acct[4] += msg.sk_msg_free()  # the leftover of a cork flush is dropped, errors hidden (W11, W23)
                msg = None  # type: ignore[assignment]
                ret = 0
        else:
            # DROP: every byte goes, eval stays DROP (sticky, §4.5); the delta rule of §4.3.
            if msg.grown != -s32(delta):
                # Kernel bug K3, copied on purpose: delta is only the last run's size change, so
                # bytes an earlier run pushed (or popped) are taken for the caller's: send() then
                # reports fewer bytes than it delivered, or fails after delivering some.
                w.kernel_bugs.add("K3")
            acct[4] += msg.sk_msg_free()
            sk_msg_apply_bytes(psock, tosend)
            copied = s32(copied - ((tosend + delta) & U32))
            return -EACCES, copied
        if ret == 0:
            if not psock.apply_bytes:
                psock.eval = SK_NONE
                psock.sk_redir = None
            if msg is not None and msg.elems and msg.elems[0].data:
                continue  # more_data: run again on the rest
        return ret, copied


def tcp_bpf_sendmsg(w: World, sk: Sock, data: bytes, flags: int) -> int:
    """§3.1: the send syscall on a socket with a msg program.  Never waits: the model's
    send buffer is unlimited (sim/tcp.py)."""
    psock = sk.psock
    assert psock is not None
    size = len(data)
    copied = 0
    err = 0
    pos = 0
    stalls = 0
    while pos < size:
        if sk.sk_err:
            err = -sk.sk_err  # not cleared here: every later send sees it too (§9.5)
            break
        msg = psock.cork if psock.cork is not None else SkMsg()
        count = len(msg.elems)
        last_len = len(msg.elems[-1].data) if count else 0
        osize = msg.size
        got, enospc = sk_msg_alloc(msg, data, pos, size - pos, w.frag)
        fail, wrote = sk_msg_memcopy_from_iter(msg, data, pos, got, reserved_start(msg, count, last_len),
                                               w.kernel_bugs)
        if fail:
            if got:
                # Bytes were reserved (a coalescing alloc) but the copy starts past them: the
                # stale sg.curr/copybreak of kernel bug K4; the send gives back 0 and nothing.
                w.kernel_bugs.add("K4")
            msg.trim(osize)
            # memcopy_returns_copied (sim/profile.py): out_err keeps sk_msg_alloc's err, so after
            # a coalescing alloc the syscall returns what it copied so far, or 0; before it, the
            # copy's -ENOSPC is the error.
            err = (-ENOSPC if enospc else 0) if w.memcopy_copied else fail
            break
        if not wrote:
            stalls += 1
            if stalls > 4:
                raise ModelHang("the sendmsg loop copies nothing and the verdict frees no room (a full ring)")
        pos += wrote  # the iterator moves by what was copied
        copied += wrote if w.memcopy_copied else got
        sk.acct[0] += got
        # The accounting subtracts the whole syscall size, not `got` (§3.1).
        if psock.cork_bytes and cork_account(psock, size, enospc):
            break
        err, copied = tcp_bpf_send_verdict(w, sk, psock, msg, copied, flags)
        if err < 0:
            break
        err = 0
    if err < 0:
        err = sk_stream_error(w.sig, sk, flags, err)
    if copied > size:
        # Kernel bug K1, copied on purpose: the DROP branch's copied -= tosend + delta, with delta
        # "negative" after a push, hands back more than the caller passed (§4.3).
        w.kernel_bugs.add("K1")
    return copied if copied > 0 else err  # "copied > 0": the fixed return of tcp_bpf_sendmsg (§3.2)


def sk_msg_recvmsg(psock: Psock, n: int, peek: bool) -> tuple[int, bytes, list[tuple[int, int]]]:
    """§7.2: copy from ingress_msg across message boundaries.  A message with no bytes at
    the head stops the copy: copy_page_to_iter returns 0, so the call returns what it has,
    or -EFAULT when that is nothing (the empty message is never dequeued)."""
    out: list[bytes] = []
    unk: list[tuple[int, int]] = []
    copied = 0
    q = psock.ingress_msg
    idx = 0
    while copied < n and idx < len(q):
        m = q[idx]
        ln = len(m.data)
        if ln == 0:
            # Kernel bug K2, copied on purpose: the empty message is never dequeued, so this and
            # every later recv fails with EFAULT and hides what is queued behind it.
            return (copied, b"".join(out), unk) if copied else (-EFAULT, b"", [])
        take = min(ln, n - copied)
        add_ranges(unk, clip_ranges(m.unk, 0, take), copied)
        out.append(m.data if take == ln else m.data[:take])
        copied += take
        if peek:
            idx += 1
            continue
        psock.msg_tot_len -= take
        m.consume(take)
        if take == ln:
            q.pop(0)
        else:
            q[0] = IngressMsg(m.data[take:], clip_ranges(m.unk, take, ln) or [], m.pieces)
    return copied, b"".join(out), unk


def tcp_bpf_recvmsg(sk: Sock, n: int, peek: bool) -> tuple[int, bytes, list[tuple[int, int]]]:
    """§7.1 with MSG_DONTWAIT: ingress_msg first; TCP data only when it is empty."""
    if n == 0:
        return 0, b"", []
    psock = sk.psock
    if psock is None or (sk.rq.buf and psock.queue_empty()):
        return tcp_recvmsg(sk, n, peek)
    r = sk_msg_recvmsg(psock, n, peek)
    if r[0]:
        return r
    # tcp_msg_wait_data: RCV_SHUTDOWN counts as ready; otherwise a 0 timeout -> EAGAIN.
    if sk.rcv_shutdown:
        return tcp_recvmsg(sk, n, peek)
    return -EAGAIN, b"", []


def tcp_bpf_ioctl_inq(sk: Sock, ingress_msg: bool, tcp_inq: bool) -> int:
    """FIONREAD (§7.4) by profile behaviour: with fionread_ingress_msg (6.12.75+, 6.18.14+) a
    socket with a psock reports its ingress_msg bytes, plus tcp_inq with fionread_tcp_inq (no
    SK_SKB verdict program here, so always); without it, TCP's tcp_inq alone."""
    if sk.psock is not None and ingress_msg:
        return sk.psock.msg_tot_len + (len(sk.rq.buf) if tcp_inq else 0)
    return len(sk.rq.buf)
