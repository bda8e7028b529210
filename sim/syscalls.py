"""Runs one Case on the model: its events as the syscalls a user makes (net/socket.c and the
runner's steps of docs/execution.md), over the state in sim/world.py.

Everything lives in a World made for one case: no global state, no I/O, deterministic.

Decisions taken where the spec leaves room (each from the kernel source; see the files named):
- Deleting an empty or out-of-range sockmap slot is EINVAL (__sock_map_delete,
  sock_map_delete_elem); a missing sockhash key is ENOENT.  Detach without an attached
  program is ENOENT (psock_replace_prog); attach always succeeds.  (sim/sockmap.py)
- Insert order of checks: BPF_F_LOCK -> EINVAL, not ESTABLISHED -> EOPNOTSUPP, flags > 2 ->
  EINVAL, sockmap key >= size -> E2BIG, psock with a program while the map has one -> EBUSY,
  EEXIST/ENOENT, sockhash full -> E2BIG.  A socket inserted while the program is detached
  gets it when re-linked with the program attached (psock_set_prog).  (sim/sockmap.py)
- FIONREAD on any socket with a psock (config BASE or TX) counts ingress_msg only (§7.4), on
  kernels with the profile behaviours fionread_ingress_msg and not fionread_tcp_inq.
- Rules that differ between kernels are profile behaviours (sim/profile.py); the World reads
  them once from the profile the case runs under.
- An ingress-redirected empty message (everything popped) blocks the ingress queue: recv
  returns EFAULT and never dequeues it (sk_msg_recvmsg).  (sim/tcp_bpf.py)
- tcp_bpf_sendmsg does not clear sk_err: a reset socket in a map returns ECONNRESET on every
  send; plain TCP clears it once, then EPIPE.  (sim/tcp_bpf.py, sim/tcp.py)
- MSG_MORE holds bytes in the sender's write queue until a push; close with unread data or
  SO_LINGER 0 purges them.  Data reaching a socket in FIN_WAIT with RCV_SHUTDOWN (closed, or
  shut down both ways) resets both ends.  (sim/tcp.py)
- Window sizes are reported only with fresh_thread (pinned page-frag layout) or after a
  successful pull; the bytes always follow the pinned layout.  Named sender threads keep
  their frag across sends; where the layout then depends on when TCP frees what was read, the
  notes say `layout_doubt` (the first send concerned).  (sim/page_frag.py)
- A send whose more_data loop cannot end is reported as a hang.  (sim/tcp_bpf.py)
- Under tcp_bpf_sendpage (6.1) sendfile/splice on a socket in config TX call tcp_bpf_sendpage
  once per pipe buffer; plain TCP keeps the batch (sock_sendpage).  (sim/sendpage.py, sim/splice.py)
- sockopts (SO_SNDBUF / SO_RCVBUF) are ignored: buffers are unlimited.  (sim/tcp.py)
"""
from __future__ import annotations

from diffuzz.contract.case import (
    SHUT_HOW,
    Attach,
    Case,
    Close,
    Detach,
    Fionread,
    MapDelete,
    MapInsert,
    Recv,
    Send,
    SendEvent,
    SendFile,
    SendMsg,
    Shutdown,
    Splice,
    send_flags_value,
)
from diffuzz.contract.outcome import Data, Endpoint, EventResult, Outcome, Ret, errno_ret
from sim.helpers import ModelHang
from sim.page_frag import PageFrag, tcp_copy_to_frag
from sim.profile import REFERENCE, Profile
from sim.sendpage import tcp_bpf_sendpage
from sim.splice import do_sendfile, do_splice
from sim.tcp import Sock, release_sock, tcp_close, tcp_let_go, tcp_sendmsg_locked, tcp_shutdown
from sim.tcp_bpf import tcp_bpf_ioctl_inq, tcp_bpf_recvmsg, tcp_bpf_sendmsg
from sim.world import World

RECV_DRAIN = 65536
EFAULT = 14
_EBADF = EventResult(ret="EBADF")  # an event on an endpoint the case closed: no syscall


def _ret(r: int) -> Ret:
    return r if r >= 0 else errno_ret(-r)


def _note_k2(w: World, r: int) -> None:
    """An EFAULT from tcp_bpf_recvmsg is kernel bug K2 (sk_msg_recvmsg, sim/tcp_bpf.py)."""
    if r == -EFAULT:
        w.kernel_bugs.add("K2")


def _notes(w: World, **more: object) -> dict[str, object]:
    notes: dict[str, object] = {"profile": w.profile.name, **more}
    if w.layout_doubt is not None:
        # A named thread's refill met a page only loose references hold (sim/page_frag.py): from
        # this send on, the kernel's layout is not fixed by the case.
        notes["layout_doubt"] = w.layout_doubt
    if w.kernel_bugs:
        notes["kernel_bugs"] = sorted(w.kernel_bugs)
    return notes


def sock_sendmsg(w: World, sk: Sock, data: bytes, flags: int, splice_pages: bool = False) -> int:
    """sock_sendmsg -> sk->sk_prot->sendmsg: tcp_bpf_sendmsg for config TX (a psock
    that captured the program, §1.1), else plain tcp_sendmsg.  splice_pages: the bytes come
    from a pipe (sendfile, splice: MSG_SPLICE_PAGES), which plain TCP takes by reference, not
    by copying into the task frag; tcp_bpf_sendmsg copies them either way."""
    psock = sk.psock
    if psock is not None and psock.prog:
        ret = tcp_bpf_sendmsg(w, sk, data, flags)
    else:
        skb_room = sk.wq.tail_room(sk.mss)
        ret = tcp_sendmsg_locked(w.sig, sk, data, None, flags)
        if ret > 0 and w.named and not splice_pages:
            tcp_copy_to_frag(w.frag, sk, ret, skb_room)  # the same task frag (a fresh one is thrown away)
    # Both take the socket lock for one call: the RST that call's segments provoked is
    # processed at its release_sock, so a splice/sendfile's next sock_sendmsg of the same
    # syscall already finds the socket reset.
    release_sock(sk)
    return ret


def sock_sendpage(w: World, sk: Sock, data: bytes, flags: int) -> int:
    """kernel_sendpage -> inet_sendpage -> sk_prot->sendpage for one pipe buffer, on a kernel
    with the tcp_bpf_sendpage behaviour and a socket in config TX: tcp_bpf_sendpage, which
    takes and releases the socket lock for this page alone (its RSTs are processed before the
    next page).  Plain TCP keeps the batch path: do_tcp_sendpages does not push a page marked
    MSG_SENDPAGE_NOTLAST, so nothing leaves before the pipe's last buffer, as with one call."""
    ret = tcp_bpf_sendpage(w, sk, data, flags)
    release_sock(sk)
    return ret


def send_event(w: World, i: int, ev: SendEvent, kind: str, flags: int) -> EventResult:
    data = w.payload(i, ev.size)  # the running offset counts every send, run or not
    sk = w.socks[ev.ep]
    if sk.closed:
        return _EBADF
    w.task = i
    w.sig[0] = False
    t = ev.thread
    w.named = t is not None
    if t is None:
        w.frag = PageFrag()  # a thread of its own: an empty task_frag (§2.2)
    else:
        w.frag = w.frags.get(t) or w.frags.setdefault(t, PageFrag())  # a named thread's frag
    if kind == "sendmsg":
        ret = sock_sendmsg(w, sk, data, flags)
    else:
        per_page = w.sendpage and sk.psock is not None and bool(sk.psock.prog)

        def sendmsg(chunk: bytes, msg_flags: int) -> int:
            if per_page:
                return sock_sendpage(w, sk, chunk, msg_flags)
            return sock_sendmsg(w, sk, chunk, msg_flags, True)

        if kind == "sendfile":
            ret = do_sendfile(sendmsg, data, per_page)
        else:
            ret = do_splice(sendmsg, data, bool(flags), per_page)
    if w.frag.doubt and w.layout_doubt is None:
        w.layout_doubt = i
    w.settle()
    return EventResult(ret=_ret(ret), sigpipe=w.sig[0])


def settled_event(w: World, i: int, ev: object) -> EventResult:
    """One event, then the RSTs it provoked.  Outside a send no user holds a socket lock:
    a reset answering bytes that an arriving FIN flushed (sim/tcp.py) is processed in
    softirq at once, before the next event looks at the socket."""
    result = event(w, i, ev)
    w.settle()
    return result


def event(w: World, i: int, ev: object) -> EventResult:
    t = type(ev)
    if t is Send or t is SendMsg:
        return send_event(w, i, ev, "sendmsg", send_flags_value(ev.flags))  # type: ignore[attr-defined]
    if t is SendFile:
        return send_event(w, i, ev, "sendfile", 0)
    if t is Splice:
        # SPLICE_F_MORE adds MSG_MORE to each sock_sendmsg (passed on as a non-zero flags
        # value); SPLICE_F_NONBLOCK only affects the pipe.
        return send_event(w, i, ev, "splice", int("SPLICE_F_MORE" in ev.flags))  # type: ignore[attr-defined]
    if t is MapDelete:
        return EventResult(ret=_ret(w.map.delete(ev.key)))  # type: ignore[attr-defined]
    if t is Detach:
        return EventResult(ret=_ret(w.map.detach()))
    if t is Attach:
        return EventResult(ret=_ret(w.map.attach()))
    sk = w.socks[ev.ep]  # type: ignore[attr-defined]
    if sk.closed:
        return _EBADF
    if t is Recv:
        w.push_pending_frames()
        queued = len(sk.rq.buf)
        r, data, unk = tcp_bpf_recvmsg(sk, ev.len, ev.peek)  # type: ignore[attr-defined]
        _note_k2(w, r)
        if len(sk.rq.buf) < queued:
            tcp_let_go(sk.peer)  # TCP data read: its skbs may be freed from now on
        if r < 0:
            return EventResult(ret=errno_ret(-r))
        return EventResult(ret=r, data=Data(data, tuple(unk)))
    if t is Fionread:
        w.push_pending_frames()
        return EventResult(ret=tcp_bpf_ioctl_inq(sk, *w.fionread))
    if t is MapInsert:
        return EventResult(ret=_ret(w.map.update(ev.key, sk, ev.flags)))  # type: ignore[attr-defined]
    if t is Close:
        w.push_pending_frames()  # the runner does this first (docs/execution.md)
        # sock_map_close: out of every map first (psock teardown, §9.2), then tcp_close.
        w.map.remove_sock(sk)
        tcp_let_go(sk)  # queues purged, here or at the peer's reset
        tcp_let_go(sk.peer)
        tcp_close(sk, ev.rst)  # type: ignore[attr-defined]
        w.settle()
        return EventResult(ret=None)
    if t is Shutdown:
        w.push_pending_frames()
        r = tcp_shutdown(sk, SHUT_HOW[ev.how])  # type: ignore[attr-defined]
        w.settle()
        return EventResult(ret=_ret(r))
    raise ValueError(f"events[{i}]: unknown event {ev!r}")

# ---- the end of a case ---------------------------------------------------------------


def drain(w: World) -> dict[str, Endpoint]:
    w.push_pending_frames()
    out: dict[str, Endpoint] = {}
    for name in w.case.endpoints():
        sk = w.socks[name]
        if sk.closed:
            out[name] = Endpoint(rx=Data(), fionread=None, end="closed")
            continue
        fion = tcp_bpf_ioctl_inq(sk, *w.fionread)
        chunks: list[bytes] = []
        unk: list[tuple[int, int]] = []
        pos = 0
        while True:
            r, data, u = tcp_bpf_recvmsg(sk, RECV_DRAIN, False)
            _note_k2(w, r)
            if r <= 0:
                end = "EOF" if r == 0 else errno_ret(-r)
                break
            for s, e in u:
                if unk and unk[-1][1] == s + pos:
                    unk[-1] = (unk[-1][0], e + pos)
                else:
                    unk.append((s + pos, e + pos))
            chunks.append(data)
            pos += r
        out[name] = Endpoint(rx=Data(b"".join(chunks), tuple(unk)), fionread=fion, end=end)
    return out


def run(case: Case, profile: Profile = REFERENCE) -> Outcome:
    """The model's Outcome for a case (side "model") on a kernel with this profile's behaviours
    (sim/profile.py; the default is the reference profile the spec describes)."""
    return run_world(World(case, profile))


def run_world(w: World) -> Outcome:
    """Run the case a World was made for (tests keep the World to inspect its sockets)."""
    case = w.case
    socks = w.socks
    inserts = tuple(_ret(w.map.update(e.key, socks[e.ep], 0)) for e in case.inserts)
    try:
        events = tuple(settled_event(w, i, ev) for i, ev in enumerate(case.events))
    except ModelHang as e:
        # The kernel's send loop, followed step by step, never ends: kernel bug K5 (a syscall a
        # BPF program keeps busy for ever: a soft lockup, diffuzz/engine/invariants.py KNOWN_BUGS).
        w.kernel_bugs.add("K5")
        return Outcome(side="model", inserts=inserts, runs=tuple(w.runs), run_count=w.run_count, hang=True,
                       notes=_notes(w, hang=str(e)))
    endpoints = drain(w)
    return Outcome(side="model", inserts=inserts, events=events, runs=tuple(w.runs), run_count=w.run_count,
                   endpoints=endpoints, notes=_notes(w))
