"""struct sk_psock: the per-socket sockmap state (spec §1.2; net/core/skmsg.c)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.sk_msg import SkMsg

if TYPE_CHECKING:
    from sim.tcp import Sock

# enum __sk_action (include/linux/skmsg.h); NONE means "run the program on the next message".
SK_NONE = 0
SK_PASS_EVAL = 1
SK_DROP_EVAL = 2
SK_REDIRECT = 3


class IngressMsg:
    """One message on psock->ingress_msg: its bytes in order (element boundaries inside an
    ingress message are not observable; §7.2 copies across them).  `pieces`: its elements as
    [page, bytes left, length], for the page references they hold (sim/page_frag.py)."""

    __slots__ = ("data", "pieces", "unk")

    def __init__(self, data: bytes, unk: list[tuple[int, int]], pieces: list[list[Any]] | None = None) -> None:
        self.data = data
        self.unk = unk
        self.pieces = pieces or []

    def consume(self, n: int) -> None:
        """sk_msg_recvmsg read n bytes: an element read to its end puts its page."""
        pieces = self.pieces
        while n > 0 and pieces:
            piece = pieces[0]
            take = min(n, piece[1])
            piece[1] -= take
            n -= take
            if not piece[1]:
                pieces.pop(0)
                if piece[0] is not None:
                    piece[0].held -= piece[2]

    def let_go(self) -> None:
        """The psock is destroyed after an RCU grace period: these references go at a time
        the case does not fix (sim/page_frag.py)."""
        for page, _, length in self.pieces:
            if page is not None:
                page.loose += length
        self.pieces = []


class Psock:
    __slots__ = (
        "apply_bytes", "cork", "cork_bytes", "eval", "ingress_msg", "links", "msg_tot_len", "prog",
        "redir_ingress", "sk", "sk_redir", "tx_enabled",
    )

    def __init__(self, sk: Sock) -> None:
        self.sk = sk
        self.prog = False  # progs.msg_parser: captured at link time (§1.1); True = the case's program
        self.eval = SK_NONE
        self.apply_bytes = 0
        self.cork_bytes = 0
        self.cork: SkMsg | None = None  # the persistent cork struct (§1.5)
        self.sk_redir: Sock | None = None
        self.redir_ingress = False
        self.ingress_msg: list[IngressMsg] = []
        self.msg_tot_len = 0  # bytes on ingress_msg; what FIONREAD reports on 6.18 (§7.4)
        self.tx_enabled = True  # SK_PSOCK_TX_ENABLED
        self.links = 0  # map slots holding this socket

    def queue_empty(self) -> bool:
        """sk_psock_queue_empty: an empty message on the queue still counts as an entry."""
        return not self.ingress_msg


def sk_msg_apply_bytes(psock: Psock, n: int) -> None:
    """sk_msg_apply_bytes: consume n bytes of the verdict's apply window (§4.2 consume_apply)."""
    if psock.apply_bytes:
        psock.apply_bytes = 0 if psock.apply_bytes < n else psock.apply_bytes - n


def sk_psock_queue_msg(psock: Psock, msg: IngressMsg) -> None:
    """Queue on ingress_msg while TX is enabled; otherwise the message is freed silently."""
    if psock.tx_enabled:
        psock.ingress_msg.append(msg)
        psock.msg_tot_len += len(msg.data)


def sk_psock_drop(psock: Psock) -> None:
    """sk_psock_drop -> sk_psock_stop: teardown when the last map link goes or the socket
    closes (§9.1): TX disabled, the cork freed, ingress data purged, verdict state lost."""
    psock.tx_enabled = False
    if psock.cork is not None:
        psock.sk.acct[4] += psock.cork.size  # corked bytes are never sent (W18)
        psock.cork.sk_msg_free()  # sk_psock_cork_free, at once: its pages are put
    psock.cork = None
    for m in psock.ingress_msg:
        m.let_go()
    psock.ingress_msg = []
    psock.msg_tot_len = 0
    psock.sk_redir = None
    psock.sk.psock = None
