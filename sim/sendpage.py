"""6.1's tcp_bpf_sendpage (net/ipv4/tcp_bpf.c): sendfile and splice on a socket with a msg
program, one pipe buffer at a time (profile behaviour tcp_bpf_sendpage, sim/profile.py).

fs/splice.c calls it once per pipe buffer (sim/splice.py splice_from_pipe).  Each call is a
syscall of its own for the sk_msg code: the cork accounting takes this page's length as the
size, and the program runs on the page as it would on a send of that many bytes.  How it differs
from tcp_bpf_sendmsg (sim/tcp_bpf.py), all from the 6.1.192 source:
- sk_msg_page_add: the page-cache page becomes an element by reference (get_page) with its
  sg.copy bit set, never coalesced with the element before it.  sk_msg_compute_data_pointers
  gives a copy element an empty window (data = data_end = NULL: the program's stores fail and
  its head is empty), and bpf_msg_pull_data always copies it into a new page (sim/helpers.py).
  Neither sg.curr nor sg.copybreak moves;
- a full ring returns 0 at once (nothing added, no run);
- no sk->sk_err check and no wait for send space: a reset socket runs its program and fails
  only where the push reaches tcp_sendmsg_locked (which clears sk_err: sock_error), while an
  ingress redirect still delivers;
- no sk_stream_error on the result, so no SIGPIPE of its own;
- it returns `copied ? copied : err` with copied unclamped: negative after a dropped cork
  flush, more than the page after K1's push + apply + DROP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.sk_msg import Elem, SkMsg
from sim.tcp import Sock
from sim.tcp_bpf import cork_account, tcp_bpf_send_verdict

if TYPE_CHECKING:
    from sim.world import World


def sk_msg_page_add(msg: SkMsg, data: bytes) -> None:
    """sk_msg_page_add: one element for the page, by reference (not a page-frag page: None),
    with its sg.copy bit set."""
    msg.elems.append(Elem(data, None, None, 0, copy=True))
    msg.size += len(data)


def tcp_bpf_sendpage(w: World, sk: Sock, data: bytes, flags: int) -> int:
    """tcp_bpf_sendpage(sk, page, offset, size, flags) for one pipe buffer's bytes."""
    psock = sk.psock
    assert psock is not None
    msg = psock.cork if psock.cork is not None else SkMsg()
    if msg.full():
        return 0  # "Catch case where ring is full and sendpage is stalled": copied 0, err 0
    size = len(data)
    sk_msg_page_add(msg, data)
    sk.acct[0] += size
    copied = size
    enospc = msg.full()
    if psock.cork_bytes and cork_account(psock, size, enospc):
        return copied  # out_err: the page waits in the cork, counted as sent
    err, copied = tcp_bpf_send_verdict(w, sk, psock, msg, copied, flags)
    if copied > size:
        # Kernel bug K1 (sim/tcp_bpf.py), here handed to splice_from_pipe_feed, whose unsigned
        # buffer length then wraps (sim/splice.py).
        w.kernel_bugs.add("K1")
    return copied if copied else err
