"""The sockets of one case: fresh TCP loopback pairs, their options, and their addresses.

docs/execution.md "Set-up": pair i is a listener on loopback port 0, `c<i>` connects, `p<i>`
is the accepted socket, TCP_NODELAY on both, the listener closed at once.  Sockets are never
kept across cases: a socket that was in a map keeps psock state (sticky verdicts, corks)
that would leak into the next case (spec §4.5, §9.1).

Every socket is closed with an RST (SO_LINGER {1, 0}): a FIN close would leave one
TIME_WAIT socket per pair, tens of thousands in a long run.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import time
from collections.abc import Callable, Iterator

from diffuzz.contract.case import Case, SockOpt, peer_of

_LINGER_RST = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}: close sends an RST
TCP_CLOSE = 7  # include/net/tcp_states.h
# The states in which a socket has not yet had its peer's FIN or RST (tcp_states.h): a FIN moves
# ESTABLISHED to CLOSE_WAIT, FIN_WAIT1 to CLOSING, FIN_WAIT2 to TIME_WAIT; an RST moves any to CLOSE.
_PEER_NOT_ENDED = frozenset({1, 4, 5})  # TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2
SETTLE_LIMIT = 0.2  # seconds Topology.settle waits at most
# Seconds await_end waits at most: a FIN held by the congestion window leaves on the ACK that
# opens it, which the peer may delay by up to TCP_DELACK_MAX (200 ms), or on a tail loss probe.
FIN_LIMIT = 0.5
SIOCOUTQNSD = 0x894B  # for TCP, write_seq - snd_nxt: written, not yet sent (tcp_ioctl)
SIOCOUTQ = 0x5411  # TIOCOUTQ: for TCP, write_seq - snd_una (tcp_ioctl)
_INT = struct.Struct("i")
# struct tcp_info (include/uapi/linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, u64 at 120.
_TCP_INFO_LEN = 136
_TCPI_BYTES = struct.Struct("QQ")
_TCPI_BYTES_OFFSET = 120

FAMILY = {"ipv4": (socket.AF_INET, "127.0.0.1"), "ipv6": (socket.AF_INET6, "::1")}


class Topology:
    """The open sockets of one case by endpoint name, and the address table that turns
    the (ip, port) a program saw in its struct sk_msg_md back into an endpoint name."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.socks: dict[str, socket.socket] = {}
        self.closed: set[str] = set()
        self.addresses: dict[tuple[bytes, int], tuple[str, ...]] = {}  # (ip, port) -> endpoints bound there
        self.acked0: dict[str, int] = {}  # tcpi_bytes_acked right after the connection was made

    @classmethod
    def connect(cls, case: Case) -> Topology:
        """Open case.pairs connected pairs and apply case.sockopts (steps 1 and 2)."""
        family, host = FAMILY[case.family]
        topo = cls(family)
        try:
            for i in range(case.pairs):
                topo._connect_pair(i, host)
            for opt in case.sockopts:
                topo._set_bufs(opt)
        except BaseException:
            topo.close_all()
            raise
        return topo

    def _connect_pair(self, i: int, host: str) -> None:
        with socket.socket(self.family, socket.SOCK_STREAM) as listener:
            listener.bind((host, 0))
            listener.listen(1)
            laddr = listener.getsockname()
            c = socket.socket(self.family, socket.SOCK_STREAM)
            self.socks[f"c{i}"] = c
            c.connect(laddr)
            p, caddr = listener.accept()
            self.socks[f"p{i}"] = p
        for sock in (c, p):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # tcpi_bytes_acked counts the SYN on the connecting side only: remember where each starts.
        self.acked0[f"c{i}"] = tcp_bytes(c)[0]
        self.acked0[f"p{i}"] = tcp_bytes(p)[0]
        ip = socket.inet_pton(self.family, laddr[0])
        # The accepted socket's local address is the listener's; the connector's is what accept() saw.
        for port, ep in ((caddr[1], f"c{i}"), (laddr[1], f"p{i}")):
            self.addresses[(ip, port)] = (*self.addresses.get((ip, port), ()), ep)

    def _set_bufs(self, opt: SockOpt) -> None:
        sock = self.socks[opt.ep]
        if opt.sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, opt.sndbuf)
        if opt.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, opt.rcvbuf)

    # ---- during the case --------------------------------------------------------------

    def sock(self, ep: str) -> socket.socket | None:
        """The open socket of ep, or None once the case closed it."""
        return self.socks.get(ep)

    def close(self, ep: str, rst: bool) -> None:
        sock = self.socks.pop(ep)
        self.closed.add(ep)
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        finally:
            sock.close()

    def await_end(self, ep: str, limit: float = FIN_LIMIT) -> None:
        """After ep's peer was closed: wait (bounded) until ep has its FIN or RST.  The model takes
        the FIN as arrived at the close, but TCP queues it behind what the congestion window still
        holds (`tcp_send_fin` makes no exception for it), and after many small segments that waits
        for a delayed ACK; ep's next send then meets a peer in FIN_WAIT1 and is reset
        (kernel-notes N21).  The FIN follows every byte, so this also waits for those."""
        sock = self.socks.get(ep)
        if sock is not None:
            _wait(lambda: _ended(sock), limit)

    def push_pending_frames(self) -> None:
        """Re-set TCP_NODELAY on every open endpoint: tcp_push_pending_frames() sends what
        MSG_MORE held back, and loopback delivers it inside the syscall (kernel-notes N1)."""
        for sock in self.socks.values():
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.settle()

    def settle(self, limit: float = SETTLE_LIMIT) -> None:
        """Wait until every open socket has sent all it wrote (and its FIN): SIOCOUTQNSD 0.

        Loopback usually delivers inside the syscall, but TCP small queues defer a burst of tiny
        skbs (an apply_bytes of 1 with MSG_EOR makes one per byte) to a tasklet, so the peer can
        still be missing bytes or the FIN when the next event looks (kernel-notes N7).  The model
        takes delivery as done; so does the runner, after this.  Called right after pending
        frames were pushed, so nothing is left that MSG_MORE holds on purpose.  (Not SIOCOUTQ: that also counts
        bytes delivered but not yet acknowledged, which a delayed ACK keeps for tens of ms.)
        Bounded: a peer whose receive window is full (sockopts, spec W21) takes nothing more."""
        _wait(self._delivered, limit)

    def _delivered(self) -> bool:
        for ep, sock in self.socks.items():
            try:
                # Sent, and (the receive softirq can run late, from ksoftirqd) received; a socket
                # in TCP_CLOSE (reset) receives nothing more, so nothing is owed to it.
                if _unsent(sock) or (_tcp_state(sock) != TCP_CLOSE and self.in_flight_to(ep) > 0):
                    return False
            except OSError:
                continue
        return True

    def in_flight_to(self, ep: str) -> int:
        """Bytes (and a FIN) that ep's TCP peer wrote that ep has not received yet: sent and
        dropped, or not sent, because ep's receive window was full.  0 when the peer is closed."""
        me, peer = self.socks.get(ep), self.socks.get(peer_of(ep))
        if me is None or peer is None:
            return 0
        try:
            if _unacked(peer) == 0:
                return 0  # everything the peer wrote was acknowledged, so it arrived
            written = tcp_bytes(peer)[0] - self.acked0[peer_of(ep)] + _unacked(peer)
            return written - tcp_bytes(me)[1]
        except OSError:
            return 0

    def endpoint_at(self, ip: bytes, port: int, prefer: str | None = None) -> str | None:
        """The endpoint bound to (ip, port), or None.  Two connectors to different listeners can
        get the same ephemeral port (connect() needs only the 4-tuple to be unique; seen as
        flaky runs[*].ctx differences): then the port names the endpoint `prefer` if it is one
        of them (the record's sender, or its peer), and nobody otherwise."""
        names = self.addresses.get((ip, port), ())
        if len(names) == 1:
            return names[0]
        return prefer if prefer in names else None

    def open_endpoints(self) -> Iterator[tuple[str, socket.socket]]:
        return iter(self.socks.items())

    # ---- clean-up ------------------------------------------------------------------------

    def close_all(self) -> None:
        """Close every open socket with an RST.  Call it after the map was emptied."""
        for ep in list(self.socks):
            try:
                self.close(ep, rst=True)
            except OSError:
                pass  # the socket is closed anyway (close() closes it whatever SO_LINGER said)


def tcp_bytes(sock: socket.socket) -> tuple[int, int]:
    """(tcpi_bytes_acked, tcpi_bytes_received) from TCP_INFO: sequence space acknowledged by
    the peer and received in order (data and FIN)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    return _TCPI_BYTES.unpack_from(info, _TCPI_BYTES_OFFSET)


def _wait(done: Callable[[], bool], limit: float) -> None:
    """Poll `done` every 0.2 ms until it holds or `limit` seconds passed; usually it holds at
    once, and then no clock is read."""
    if done():
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.0002)
        if done():
            return


def _ended(sock: socket.socket) -> bool:
    """The socket has had its peer's FIN or RST (or is gone)."""
    try:
        return _tcp_state(sock) not in _PEER_NOT_ENDED
    except OSError:
        return True


def _tcp_state(sock: socket.socket) -> int:
    """tcpi_state, the first byte of TCP_INFO."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def _unsent(sock: socket.socket) -> int:
    return _INT.unpack(fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, _INT.pack(0)))[0]


def _unacked(sock: socket.socket) -> int:
    return _INT.unpack(fcntl.ioctl(sock.fileno(), SIOCOUTQ, _INT.pack(0)))[0]
