"""fs/splice.c: sendfile and splice into a socket (spec §8.1, §8.2).

Kernels >= 6.5 (splice_to_socket, below) and, with the profile behaviour tcp_bpf_sendpage,
6.1's generic_splice_sendpage (splice_from_pipe): one sendpage call per pipe buffer.

The payload sits in page-sized (4096-byte) pipe buffers.  splice_to_socket sends up to 16
buffers per sock_sendmsg call and, when a call takes only part of its batch, offers the
rest again in a new call; sendfile reads the file in batches of one pipe (16 pages) through
splice_direct_to_actor and stops when a batch is not sent whole.

Each sock_sendmsg call carries MSG_MORE when the caller passed SPLICE_F_MORE (splice_to_socket)
or, for sendfile, while more file data is pending (splice_direct_to_actor sets SPLICE_F_MORE for
every batch but the last).  TCP then holds a partial segment back (sim/tcp.py); an RST close
before the runner pushes pending frames loses it.
"""

from __future__ import annotations

from collections.abc import Callable

PIPE_BUF_SIZE = 4096
PIPE_DEF_BUFFERS = 16
PIPE_BATCH = PIPE_BUF_SIZE * PIPE_DEF_BUFFERS  # 65536 bytes: 16 full page buffers

MSG_MORE = 0x8000

SendMsg = Callable[[bytes, int], int]  # (bytes, msg_flags) -> bytes sent or -errno


def splice_to_socket(sock_sendmsg: SendMsg, data: bytes, more: bool) -> int:
    """Send the bytes of a pipe (all in at most 16 buffers here) to the socket.

    Returns the bytes spliced, or the first call's error.  A call that claims more bytes
    than remain (tcp_bpf_sendmsg can, spec §4.3 with push + apply + DROP) ends the loop with
    that count; in the kernel the pipe-buffer release loop would then walk past the
    buffers it has (a kernel bug to watch for, not something to imitate).
    """
    spliced = 0
    pos = 0
    n = len(data)
    while pos < n:
        # Each batch takes every remaining buffer: a user pipe holds at most 16 buffers
        # (case.MAX_SPLICE) and sendfile's batches are one pipe each.
        ret = sock_sendmsg(data[pos:] if pos else data, MSG_MORE if more else 0)
        if ret <= 0:
            return spliced if spliced else ret
        spliced += ret
        pos += ret
    return spliced


def splice_from_pipe(sendpage: SendMsg, data: bytes, more: bool) -> int:
    """6.1's __splice_from_pipe with pipe_to_sendpage (generic_splice_sendpage): the socket's
    sendpage once per pipe buffer (<= 4096 bytes), with MSG_MORE for SPLICE_F_MORE.

    splice_from_pipe_feed: a call that takes only part of a buffer is followed by a call for the
    rest of the same buffer; a call that returns <= 0 ends the splice, which returns the bytes
    spliced so far, else that value.  MSG_SENDPAGE_NOTLAST, set for every buffer but the pipe's
    last, is not passed: on 6.1.184+ tcp_bpf_push hands the bytes to tcp_sendmsg_locked, which
    ignores it (plain TCP's do_tcp_sendpages does not push on it, and that path keeps the batch
    of splice_to_socket: the last buffer pushes what the others left queued, sim/syscalls.py).
    A call that claims more than the buffer holds (K1: tcp_bpf_sendpage returns copied
    unclamped) makes the kernel's unsigned buf->len and total_len wrap; the model ends the
    splice with that count, as splice_to_socket does.
    """
    spliced = 0
    flags = MSG_MORE if more else 0
    for start in range(0, len(data), PIPE_BUF_SIZE):
        buf = data[start : start + PIPE_BUF_SIZE]
        off = 0
        while off < len(buf):
            ret = sendpage(buf[off:] if off else buf, flags)
            if ret <= 0:
                return spliced if spliced else ret
            spliced += ret
            if ret > len(buf) - off:
                return spliced
            off += ret
    return spliced


def do_sendfile(sock_sendmsg: SendMsg, data: bytes, per_page: bool = False) -> int:
    """splice_direct_to_actor: read up to one pipe of the file, splice it, repeat; stop
    early when a batch is not sent whole.  Returns the total or the first error.  per_page:
    6.1's sendpage path (splice_from_pipe), `sock_sendmsg` then being the sendpage."""
    total = 0
    pos = 0
    n = len(data)
    actor = splice_from_pipe if per_page else splice_to_socket
    while pos < n:
        batch = data[pos : pos + PIPE_BATCH]
        ret = actor(sock_sendmsg, batch, pos + len(batch) < n)
        if ret <= 0:
            return total if total else ret
        total += ret
        pos += len(batch)
        if ret < len(batch):
            break
    return total


def do_splice(sock_sendmsg: SendMsg, data: bytes, more: bool, per_page: bool = False) -> int:
    """splice(pipe -> socket, len, flags) after write(pipe, payload): one splice_to_socket
    (per_page: splice_from_pipe; the one write filled whole 4096-byte buffers, pipe_write).
    `more` is SPLICE_F_MORE; the whole payload fits in one batch (case.MAX_SPLICE)."""
    if not data:
        return 0
    return (splice_from_pipe if per_page else splice_to_socket)(sock_sendmsg, data, more)
