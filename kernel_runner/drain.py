"""The end of a case (docs/execution.md): what every endpoint still holds.

For each endpoint in Case.endpoints() order that the case did not close: FIONREAD, then
recv(65536, MSG_DONTWAIT) until EAGAIN, EOF or an error.  Pending frames were pushed just
before (Topology.push_pending_frames), so nothing waits on the MSG_MORE timer and a
non-blocking read sees everything loopback delivered.

One thing can still hold bytes back: a receive window that was full (spec §10
"back-pressure").  Segments the receiver could not queue were dropped and come again with
the sender's retransmit timer (200 ms, 4 KiB at a time here; W21 needs 1.7 s), or were
never sent.  The model counts bytes pushed to TCP as arrived, so when EAGAIN comes while
the TCP peer wrote more than this endpoint received (Topology.in_flight_to, from TCP_INFO)
the drain waits for them (select, up to DRAIN_WAIT seconds per case) and reads on.  Cases
without back-pressure never wait: their peer has nothing unacknowledged.
"""

from __future__ import annotations

import errno
import fcntl
import select
import socket
import struct
import time

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Data, Endpoint, errno_ret
from kernel_runner.topology import Topology

FIONREAD = 0x541B  # <asm-generic/ioctls.h>, SIOCINQ for sockets
_INT = struct.Struct("i")
_ZERO = _INT.pack(0)
RECV_CHUNK = 65536
DRAIN_WAIT = 3.0  # seconds a case's drain may wait for back-pressured bytes, in all

CLOSED = Endpoint(rx=Data(), fionread=None, end="closed")


def fionread(sock: socket.socket) -> int | str:
    """ioctl(FIONREAD): the count, or the errno name."""
    try:
        return _INT.unpack(fcntl.ioctl(sock.fileno(), FIONREAD, _ZERO))[0]
    except OSError as e:
        return errno_ret(e.errno)


def drain_endpoint(topo: Topology, ep: str, sock: socket.socket, until: float) -> Endpoint:
    count = fionread(sock)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(RECV_CHUNK, socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                left = until - time.monotonic()
                if left > 0 and topo.in_flight_to(ep) > 0:
                    # The window opened as we read; the rest comes with the sender's next retransmit.
                    select.select([sock], [], [], min(left, 0.05))
                    continue
                end = "EAGAIN"
            else:
                end = errno_ret(e.errno)
            break
        if not chunk:
            end = "EOF"
            break
        chunks.append(chunk)
    # Endpoint.fionread has no room for an errno: a failed FIONREAD (never seen on a
    # connected TCP socket) is reported as None, like a closed endpoint.
    return Endpoint(rx=Data(b"".join(chunks)), fionread=count if isinstance(count, int) else None, end=end)


def drain(case: Case, topo: Topology) -> dict[str, Endpoint]:
    """Every endpoint's final state, in Case.endpoints() order."""
    out: dict[str, Endpoint] = {}
    until = time.monotonic() + DRAIN_WAIT
    for ep in case.endpoints():
        sock = topo.sock(ep)
        out[ep] = CLOSED if sock is None else drain_endpoint(topo, ep, sock, until)
    return out
