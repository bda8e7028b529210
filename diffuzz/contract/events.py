"""The events of a case: sends and everything that may happen between them (tagged by `op`).

A send of any kind may name its sender thread (`thread`, a small integer): sends that name the
same thread are issued by one thread, in event order, and share its page frag (spec §2.1); every
such thread is new when the case starts.  A send that names none has a thread of its own
(`Case.fresh_thread`, the pinned layout of spec §2.2).

Part of the contract (diffuzz/contract/case.py gathers it): imports nothing else of the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Send:
    """send(ep, payload, flags): one iovec."""

    ep: str
    len: int
    flags: tuple[str, ...] = ()
    thread: int | None = None
    op = "send"

    @property
    def size(self) -> int:
        return self.len


@dataclass(frozen=True)
class SendMsg:
    """sendmsg(ep, iovecs of the given lengths, flags)."""

    ep: str
    iov: tuple[int, ...]
    flags: tuple[str, ...] = ()
    thread: int | None = None
    op = "sendmsg"

    @property
    def size(self) -> int:
        return sum(self.iov)


@dataclass(frozen=True)
class SendFile:
    """sendfile(ep, file, offset 0, len) from a fresh file holding the payload."""

    ep: str
    len: int
    thread: int | None = None
    op = "sendfile"

    @property
    def size(self) -> int:
        return self.len


@dataclass(frozen=True)
class Splice:
    """write(pipe, payload) then splice(pipe -> ep, len, flags) from a fresh pipe."""

    ep: str
    len: int
    flags: tuple[str, ...] = ()
    thread: int | None = None
    op = "splice"

    @property
    def size(self) -> int:
        return self.len


@dataclass(frozen=True)
class Recv:
    """recv(ep, len, MSG_DONTWAIT [| MSG_PEEK]); never blocks."""

    ep: str
    len: int
    peek: bool = False
    op = "recv"


@dataclass(frozen=True)
class Fionread:
    """ioctl(ep, FIONREAD)."""

    ep: str
    op = "fionread"


@dataclass(frozen=True)
class Close:
    """close(ep); with rst the socket is closed with SO_LINGER 0 (an RST to the peer)."""

    ep: str
    rst: bool = False
    op = "close"


@dataclass(frozen=True)
class Shutdown:
    """shutdown(ep, how)."""

    ep: str
    how: str = "SHUT_WR"
    op = "shutdown"


@dataclass(frozen=True)
class MapDelete:
    """bpf_map_delete_elem(map, key) from user space."""

    key: int
    op = "map_delete"


@dataclass(frozen=True)
class MapInsert:
    """bpf_map_update_elem(map, key, ep's fd, flags) from user space."""

    key: int
    ep: str
    flags: int = 0
    op = "map_insert"


@dataclass(frozen=True)
class Detach:
    """BPF_PROG_DETACH of the verdict program from the map."""

    op = "detach"


@dataclass(frozen=True)
class Attach:
    """BPF_PROG_ATTACH of the verdict program to the map (again)."""

    op = "attach"


SendEvent = Send | SendMsg | SendFile | Splice
Event = (
    Send | SendMsg | SendFile | Splice | Recv | Fionread | Close | Shutdown | MapDelete | MapInsert | Detach | Attach
)
EVENT_TYPES: Mapping[str, type] = {
    t.op: t
    for t in (Send, SendMsg, SendFile, Splice, Recv, Fionread, Close, Shutdown, MapDelete, MapInsert, Detach, Attach)
}
SEND_TYPES = (Send, SendMsg, SendFile, Splice)


