"""A minimal plain TCP endpoint on loopback (net/ipv4/tcp.c, tcp_input.c), as far as the
sk_msg observables need it.

Modelled: the receive queue (bytes pushed to TCP have arrived: the runner pushes pending
frames before every observation, docs/execution.md), FIN and RST, shutdown, the error
rules of tcp_sendmsg_locked / sk_stream_error (EPIPE + SIGPIPE, pending sk_err), the
reset a closed socket answers data with, close with unread data (RST), FIONREAD.

MSG_MORE (from the user, or set by tcp_bpf_push at an apply boundary, spec §5.1) holds
the partial last skb in the sender's write queue (`wq`; earlier skbs, which MSG_EOR cuts,
leave at once: WriteQueue, kernel-notes N8) until something pushes it: a later
send without MSG_MORE, the FIN of shutdown/close, a FIN from the peer or a data segment that
takes the slow path (tcp_data_snd_check; see tcp_deliver), or the runner, which pushes pending
frames on every open socket before each recv, fionread and the final drain (docs/execution.md).
An RST (received, or sent by close) purges the write queue, so held bytes are then lost.

Limits (documented, not modelled): send and receive buffers are unlimited, so blocking
sends never block and MSG_DONTWAIT never returns EAGAIN; SO_SNDBUF / SO_RCVBUF from
`sockopts` are ignored (spec W21 shows their effect depends on timing, §10).  The RST a
closed peer sends back in answer to data waits in the sender's backlog (`pending_reset`: the
sender holds its socket lock) and takes effect at the release_sock of that lock: the end of a
sock_sendmsg call, a redirect in the verdict loop, or the end of a redirect target's push
(docs/kernel-notes.md N9).
"""

from __future__ import annotations

from typing import Any

from sim.sk_msg import Ranges, add_ranges, clip_ranges

EPIPE = 32
ECONNRESET = 104
ENOTCONN = 107
EAGAIN = 11
EINVAL = 22

MSG_PEEK = 0x2
MSG_DONTWAIT = 0x40
MSG_EOR = 0x80
MSG_NOSIGNAL = 0x4000
MSG_MORE = 0x8000

# Loopback MSS (mtu 65536 minus IP, TCP and timestamp headers).  With MSG_MORE, tcp_push
# corks (TCP_NAGLE_CORK): whole MSS-sized segments leave, a partial one waits.
TCP_MSS = {2: 65483, 10: 65464}

# Socket states, as far as they differ here.
ESTABLISHED = "ESTABLISHED"
CLOSE_WAIT = "CLOSE_WAIT"  # the peer's FIN arrived
FIN_WAIT = "FIN_WAIT"  # we sent FIN (FIN_WAIT1/2)
LAST_ACK = "LAST_ACK"
CLOSE = "CLOSE"  # reset, or both FINs exchanged (TIME_WAIT is a separate sock; this one is CLOSE)


class RxQueue:
    """sk_receive_queue as one byte string with unknown ranges (offsets into buf)."""

    __slots__ = ("buf", "unk")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.unk: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.buf)

    def append(self, data: bytes, unk: Ranges) -> None:
        add_ranges(self.unk, unk, len(self.buf))
        self.buf += data

    def take(self, n: int, peek: bool) -> tuple[bytes, list[tuple[int, int]]]:
        data = bytes(self.buf[:n])
        unk = clip_ranges(self.unk, 0, n) or []
        if not peek:
            del self.buf[:n]
            self.unk = clip_ranges(self.unk, n, n + len(self.buf)) or []
        return data, unk


class WriteQueue(RxQueue):
    """sk_write_queue: bytes written to TCP and not yet sent, cut into skbs.

    tcp_sendmsg_locked adds to the tail skb while it has room (size_goal: one MSS on loopback)
    and may take more (tcp_skb_can_collapse_to: not once MSG_EOR ended it); otherwise it starts a
    new skb.  tcp_write_xmit sends every skb but the last with TCP_NAGLE_PUSH; only the last
    one is tested against the cork (MSG_MORE), so MSG_MORE holds at most one partial skb.
    """

    __slots__ = ("eor", "skbs")

    def __init__(self) -> None:
        super().__init__()
        self.skbs: list[int] = []  # skb lengths, head first
        self.eor = False  # the tail skb was ended by MSG_EOR

    def queue(self, data: bytes, unk: Ranges, size_goal: int, eor: bool) -> None:
        self.append(data, unk)
        n = len(data)
        if self.skbs and not self.eor:
            room = min(size_goal - self.skbs[-1], n)
            if room > 0:
                self.skbs[-1] += room
                n -= room
        while n:
            k = min(size_goal, n)
            self.skbs.append(k)
            n -= k
        if data:  # the EOR mark is set only once bytes were copied
            self.eor = eor

    def tail_room(self, size_goal: int) -> int:
        """Bytes the tail skb still takes (size_goal - skb->len), 0 when a new skb starts: the
        first chunk of the next tcp_sendmsg_locked copy ends there (sim/page_frag.py)."""
        if self.skbs and not self.eor:
            return max(size_goal - self.skbs[-1], 0)
        return 0

    def sendable(self, cork: bool, mss: int) -> int:
        """Bytes tcp_write_xmit sends now: all, or all but a partial last skb when corked."""
        if cork and self.skbs and self.skbs[-1] < mss:
            return len(self.buf) - self.skbs[-1]
        return len(self.buf)

    def send(self, n: int) -> tuple[bytes, list[tuple[int, int]]]:
        """Take the first n bytes (whole skbs, from sendable) off the queue."""
        left = n
        while left:
            left -= self.skbs.pop(0)
        assert left == 0, "sendable() sends whole skbs"
        return self.take(n, False)


class Sock:
    """One TCP endpoint (struct sock / tcp_sock), named c<i> or p<i>."""

    __slots__ = (
        "acct",
        "closed",
        "done",
        "mss",
        "name",
        "peer",
        "pending_reset",
        "psock",
        "rcv_shutdown",
        "rq",
        "send_shutdown",
        "sk_err",
        "state",
        "tx_pages",
        "wq",
    )

    def __init__(self, name: str, family: int = 2) -> None:
        self.name = name
        self.mss = TCP_MSS[family]
        self.peer: Sock | None = None
        self.state = ESTABLISHED
        self.sk_err = 0
        self.send_shutdown = False  # SEND_SHUTDOWN in sk_shutdown
        self.rcv_shutdown = False  # RCV_SHUTDOWN in sk_shutdown
        self.done = False  # SOCK_DONE: the peer's FIN was received
        self.closed = False  # the case closed the fd (the sock may linger as an orphan)
        self.pending_reset = False  # an RST is waiting in the backlog (module docstring)
        self.rq = RxQueue()
        self.wq = WriteQueue()  # bytes written to TCP but held back by MSG_MORE
        # sk_user_data: the sockmap's struct sk_psock (sim/psock.py), or None.  Untyped here, as
        # in the kernel (a void *), so that TCP stays below the psock layer that points back at it.
        self.psock: Any = None
        # Byte accounting of this socket's sk_msg sends, for the model's own invariant tests:
        # [accepted into messages, pushed by helpers, popped by helpers, handed to TCP or an
        # ingress queue, freed (DROP, errors, cork leftovers, teardown)].
        self.acct = [0, 0, 0, 0, 0]
        # Page-frag pages (sim/sk_msg.py Page) whose bytes this socket's skbs hold, and how many:
        # a named sender thread's later sends depend on them (sim/page_frag.py).
        self.tx_pages: dict[Any, int] = {}


def sock_error(sk: Sock) -> int:
    """sock_error: -sk_err, and clear it."""
    err = sk.sk_err
    sk.sk_err = 0
    return -err


def sk_stream_error(world_sig: list[bool], sk: Sock, flags: int, err: int) -> int:
    """sk_stream_error: -EPIPE turns into a pending socket error if there is one; a
    remaining -EPIPE raises SIGPIPE unless MSG_NOSIGNAL."""
    if err == -EPIPE:
        err = sock_error(sk) or -EPIPE
    if err == -EPIPE and not flags & MSG_NOSIGNAL:
        world_sig[0] = True
    return err


def tcp_took(sk: Sock, page: Any, n: int) -> None:
    """TCP on sk now holds n bytes of a page-frag page (sim/sk_msg.py Page: an skb frag).  Pages
    from alloc_pages (push, pop, pull copies) are not the frag's (None) and are not followed."""
    if page is not None:
        tx = sk.tx_pages
        tx[page] = tx.get(page, 0) + n


def tcp_let_go(sk: Sock) -> None:
    """Whatever sk's TCP holds may be freed from now on (sim/page_frag.py): its receiver read
    or purged, a socket closed, or a reset purged the queues."""
    for page, n in sk.tx_pages.items():
        page.loose += n
    sk.tx_pages.clear()


def tcp_reset(sk: Sock) -> None:
    """tcp_reset + tcp_done: the error depends on the state; the receive queue stays readable."""
    if sk.state == CLOSE:
        return
    sk.sk_err = EPIPE if sk.state == CLOSE_WAIT else ECONNRESET
    sk.state = CLOSE
    sk.wq = WriteQueue()  # tcp_write_queue_purge
    sk.send_shutdown = sk.rcv_shutdown = True
    tcp_let_go(sk)  # its skbs are purged, and the peer's answer may have dropped their clones
    if sk.peer is not None:
        tcp_let_go(sk.peer)


def release_sock(sk: Sock) -> None:
    """release_sock: the backlog is processed, so an RST that arrived while the lock was held
    (`pending_reset`, see the module docstring) takes effect now."""
    if sk.pending_reset:
        sk.pending_reset = False
        tcp_reset(sk)


def tcp_fin(sk: Sock) -> None:
    """tcp_fin: the peer's FIN arrived after all its data."""
    if sk.state == CLOSE:
        return
    sk.rcv_shutdown = True
    sk.done = True
    if sk.state == ESTABLISHED:
        sk.state = CLOSE_WAIT
    elif sk.state in (FIN_WAIT, LAST_ACK):
        sk.state = CLOSE  # simultaneous close / our FIN was already acked: TIME_WAIT sock takes over


def tcp_deliver(sk: Sock, data: bytes, unk: Ranges) -> None:
    """Bytes sent by sk arrive at its peer."""
    peer = sk.peer
    assert peer is not None
    if peer.closed or (peer.state == FIN_WAIT and peer.rcv_shutdown):
        # tcp_rcv_state_process, FIN_WAIT1/2 with RCV_SHUTDOWN (a closed socket, or one shut
        # down both ways): data is not queued; the receiver resets (ECONNRESET) and answers
        # with an RST.
        if data:
            sk.pending_reset = True
            if not peer.closed:
                tcp_reset(peer)
        return
    if peer.state == CLOSE:
        return  # the peer was reset: the segment is answered with RST, sk is already CLOSE
    peer.rq.append(data, unk)
    if peer.wq.buf and peer.state != ESTABLISHED:
        # tcp_data_snd_check, which sends what MSG_MORE held, runs for every segment on the
        # slow path (tcp_rcv_state_process: any state but ESTABLISHED).  In ESTABLISHED the
        # fast path of tcp_rcv_established calls it only when the segment acks new data, and
        # nothing is unacked here: held bytes were never sent and loopback acks the rest at
        # once.  So a data segment alone does not release them (docs/kernel-notes.md N4).
        tcp_push_pending_frames(peer)


def tcp_sendmsg_locked(sig: list[bool], sk: Sock, data: bytes, unk: Ranges, flags: int) -> int:
    """tcp_sendmsg_locked with unlimited buffers: all bytes or an error.

    Errors: a pending sk_err or SEND_SHUTDOWN -> -EPIPE through sk_stream_error; a state
    other than ESTABLISHED/CLOSE_WAIT -> sk_stream_wait_connect -> sk_err or -EPIPE.
    """
    if sk.state not in (ESTABLISHED, CLOSE_WAIT):
        err = sock_error(sk) if sk.sk_err else -EPIPE
        return sk_stream_error(sig, sk, flags, err)
    if sk.sk_err or sk.send_shutdown:
        return sk_stream_error(sig, sk, flags, -EPIPE)
    if data:
        # A 0-byte call copies nothing and so pushes nothing (tcp_sendmsg_locked: "if (copied)").
        wq = sk.wq
        wq.queue(data, unk, sk.mss, bool(flags & MSG_EOR))
        n = wq.sendable(bool(flags & MSG_MORE), sk.mss)  # tcp_push: MSG_MORE -> TCP_NAGLE_CORK
        if n:
            out, u = wq.send(n)
            tcp_deliver(sk, out, u)
    return len(data)


def tcp_push_pending_frames(sk: Sock) -> None:
    """Send everything held in the write queue to the peer."""
    if sk.wq.buf:
        data, unk = sk.wq.send(len(sk.wq.buf))
        tcp_deliver(sk, data, unk)


def tcp_recvmsg(sk: Sock, n: int, peek: bool) -> tuple[int, bytes, list[tuple[int, int]]]:
    """tcp_recvmsg with MSG_DONTWAIT: (ret, data, unknown ranges)."""
    if n == 0:
        return 0, b"", []
    if sk.rq.buf:
        data, unk = sk.rq.take(n, peek)
        return len(data), data, unk
    if sk.done:
        return 0, b"", []
    if sk.sk_err:
        return sock_error(sk), b"", []
    if sk.rcv_shutdown:
        return 0, b"", []
    if sk.state == CLOSE:
        return -ENOTCONN, b"", []
    return -EAGAIN, b"", []


def tcp_send_fin(sk: Sock) -> None:
    """tcp_shutdown / tcp_close: send FIN behind the queued data."""
    if sk.state == ESTABLISHED:
        sk.state = FIN_WAIT
    elif sk.state == CLOSE_WAIT:
        sk.state = LAST_ACK
    else:
        return
    tcp_push_pending_frames(sk)  # the FIN rides behind the queued data
    peer = sk.peer
    assert peer is not None
    if not peer.closed:
        tcp_fin(peer)
        if sk.state == LAST_ACK:
            sk.state = CLOSE  # the peer acks our FIN at once on loopback
        if peer.wq.buf and peer.state != CLOSE:
            tcp_push_pending_frames(peer)  # tcp_data_snd_check after the FIN
    elif sk.state == LAST_ACK:
        sk.state = CLOSE


def tcp_send_active_reset(sk: Sock) -> None:
    peer = sk.peer
    assert peer is not None
    if sk.state != CLOSE and not peer.closed:
        tcp_reset(peer)
    sk.state = CLOSE
    sk.wq = WriteQueue()  # tcp_write_queue_purge: held bytes are never sent


def tcp_shutdown(sk: Sock, how: int) -> int:
    """inet_shutdown: how 0/1/2 -> RCV/SEND/both; ENOTCONN on a CLOSE socket (bits still set)."""
    if how not in (0, 1, 2):
        return -EINVAL
    err = -ENOTCONN if sk.state == CLOSE else 0
    if how in (0, 2):
        sk.rcv_shutdown = True
    if how in (1, 2):
        sk.send_shutdown = True
        tcp_send_fin(sk)
    return err


def tcp_close(sk: Sock, rst: bool) -> None:
    """tcp_close after the psock is gone: unread receive data or SO_LINGER {1, 0} send an
    RST instead of a FIN."""
    if rst or sk.rq.buf:
        tcp_send_active_reset(sk)
    else:
        # __tcp_close sets sk_shutdown = SHUTDOWN_MASK before tcp_send_fin: bytes the FIN
        # releases from the peer (tcp_data_snd_check) find a FIN_WAIT socket that reads no
        # more and are answered with an RST (tcp_deliver).
        sk.rcv_shutdown = True
        sk.send_shutdown = True
        tcp_send_fin(sk)
    sk.closed = True
