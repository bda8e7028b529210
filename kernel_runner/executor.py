"""Runs one Case on the real kernel: set-up, every event, the drain, the clean-up.

docs/execution.md is the contract; this file follows it line by line.  The program comes
from a Backend (kernel_runner/backend.py), the sockets from topology.py, the final state from
drain.py, and the program's records are translated by records.py.

Three rules shape the send path:
- SIGPIPE.  The worker blocks SIGPIPE once in its main thread, before any other thread exists,
  so every thread inherits the blocked mask.  A blocked signal is queued even though Python
  ignores SIGPIPE (kernel/signal.c sig_ignored(): "Blocked signals are never ignored"), so
  after each send the issuing thread takes it back with sigtimedwait(timeout 0): that is both
  the check and the consumption, in one syscall, and nothing leaks into the next send.
- fresh_thread.  Each send-kind event runs in a new thread, so current->task_frag starts
  empty and the page-frag layout (and with it every data_end - data) is pinned (spec §2.2).
  On x86-64 the thread is a raw pthread that runs only the syscall (RawThread, below);
  elsewhere, or if its start-up self-test fails, _thread.start_new_thread.  Measured on the
  2-CPU test VM with the worker pinned: about 30 us per raw thread, 45 us per Python thread
  (60-120 us and a 3-5 ms 99th percentile unpinned); tests/kernel/test_worker.py checks the
  two give identical outcomes.
- Which event ran a program.  A record carries the tid of the thread that ran it; its task
  is the index of the event whose thread has that tid ("?<tid>" for any other thread).  With
  fresh threads every send has its own tid, so the records are read once, after the drain;
  otherwise they are read after each send (the program runs only inside a send syscall).
"""

from __future__ import annotations

import _thread
import ctypes
import mmap
import os
import platform
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from diffuzz.contract.case import (
    SEND_FLAGS,
    SHUT_HOW,
    SPLICE_FLAGS,
    Attach,
    Case,
    Close,
    Detach,
    Event,
    Fionread,
    MapDelete,
    MapInsert,
    Recv,
    Send,
    SendFile,
    SendMsg,
    Shutdown,
    Splice,
)
from diffuzz.contract.outcome import MAX_RUN_RECORDS, Data, EventResult, Outcome, Ret, Run, errno_ret
from kernel_runner.backend import Backend, CaseProgram, RawRun
from kernel_runner.drain import drain, fionread
from kernel_runner.records import task_of, to_run
from kernel_runner.topology import Topology

BPF_ANY = 0
_SIGPIPE = (signal.SIGPIPE,)
_EBADF = EventResult(ret="EBADF")  # an event on an endpoint the case already closed: no syscall


class CaseSetupError(RuntimeError):
    """The kernel refused a set-up step that must not fail (the first attach)."""


def block_sigpipe() -> None:
    """Call once, in the main thread, before any thread is started (see the module doc)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)


def take_sigpipe() -> bool:
    """True if a SIGPIPE was pending for this thread (or the process); it is consumed."""
    return signal.sigtimedwait(_SIGPIPE, 0) is not None


def _ret(rc: int) -> Ret:
    """A backend's 0-or-negative-errno as an outcome Ret."""
    return rc if rc >= 0 else errno_ret(-rc)


def _flags(names: tuple[str, ...], table: Any) -> int:
    value = 0
    for name in names:
        value |= table[name]
    return value


# ---- the send syscalls; each runs in the issuing thread and returns (ret, sigpipe, tid) ----

SendResult = tuple[Ret, bool, int]


def _issue(call: Callable[..., int], *args: Any) -> SendResult:
    try:
        ret: Ret = call(*args)
    except OSError as e:
        ret = errno_ret(e.errno)
    return ret, take_sigpipe(), threading.get_native_id()


def _sendfile(sock_fd: int, file_fd: int, count: int) -> int:
    return os.sendfile(sock_fd, file_fd, 0, count)


def _splice(pipe_r: int, sock_fd: int, count: int, flags: int) -> int:
    return os.splice(pipe_r, sock_fd, count, flags=flags)


def _in_fresh_thread(call: Callable[..., int], *args: Any) -> SendResult:
    """Run _issue(call, *args) in a newly created thread and wait for it."""
    done = _thread.allocate_lock()
    done.acquire()
    box: list[Any] = []

    def body() -> None:
        try:
            box.append(_issue(call, *args))
        except BaseException as e:  # a bug, not a syscall error: hand it to the worker thread
            box.append(e)
        finally:
            done.release()

    _thread.start_new_thread(body, ())
    done.acquire()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


# ---- raw send threads: a pthread that runs one syscall and never touches Python ------------------
#
# A Python thread costs two GIL hand-overs and a thread state on top of clone(); a pthread
# whose start routine is the 90 bytes of x86-64 below costs only clone() and the join.  It
# does exactly what the Python path does: the send syscall, then rt_sigtimedwait(SIGPIPE,
# timeout 0) in the same thread (the mask, SIGPIPE blocked, is inherited from the creator),
# then gettid().  Used when the machine runs x86-64 and may map executable memory; a
# self-test at start-up decides, and anything else falls back to _thread.

# void *start(long *b): b[0] = nr, b[1..6] = args, then b[7] = ret, b[8] = sigtimedwait, b[9] = tid;
# b[10] = the sigset {SIGPIPE}, b[11..12] = a zero timespec.  syscall clobbers rcx and r11.
_TRAMPOLINE = bytes.fromhex(
    "4989fb"  # mov r11, rdi
    "498b03" "498b7b08" "498b7310" "498b5318" "4d8b5320" "4d8b4328" "4d8b4b30"  # rax, rdi, rsi, rdx, r10, r8, r9
    "4153" "0f05" "415b" "49894338"  # push r11; syscall; pop r11; b[7] = rax
    "b880000000" "498d7b50" "31f6" "498d5358" "41ba08000000"  # rt_sigtimedwait(&b[10], NULL, &b[11], 8)
    "4153" "0f05" "415b" "49894340"  # b[8] = rax
    "b8ba000000" "4153" "0f05" "415b" "49894348"  # gettid(); b[9] = rax
    "31c0" "c3"  # return NULL
)
NR_SENDFILE, NR_SENDTO, NR_SENDMSG, NR_SPLICE, NR_GETPID = 40, 44, 46, 275, 39


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int))


class RawThread:
    """Issues one syscall in a new pthread running _TRAMPOLINE; see above."""

    def __init__(self) -> None:
        if platform.machine() != "x86_64":
            raise OSError(f"no trampoline for {platform.machine()}")
        self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._page.write(_TRAMPOLINE)
        self._code = (ctypes.c_char * len(_TRAMPOLINE)).from_buffer(self._page)
        libc = ctypes.CDLL(None)  # CDLL releases the GIL around each call
        self._create = libc.pthread_create
        self._create.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        self._join = libc.pthread_join
        self._join.argtypes = (ctypes.c_ulong, ctypes.c_void_p)
        self._block = (ctypes.c_long * 13)()
        self._block[10] = 1 << (signal.SIGPIPE - 1)
        self._thread = ctypes.c_ulong()
        self._args = (ctypes.addressof(self._thread), None, ctypes.addressof(self._code), ctypes.addressof(self._block))
        self._offset = ctypes.c_int64()
        ret, _, tid = self.call(NR_GETPID)
        if ret != os.getpid() or tid in (0, threading.get_native_id()):
            raise OSError("raw thread self-test failed")

    def call(self, nr: int, *args: int) -> SendResult:
        b = self._block
        b[0] = nr
        for i in range(6):
            b[i + 1] = args[i] if i < len(args) else 0
        rc = self._create(*self._args)
        if rc != 0:
            raise OSError(rc, f"pthread_create: {os.strerror(rc)}")
        self._join(self._thread.value, None)
        ret = b[7]
        return (ret if ret >= 0 else errno_ret(-ret)), b[8] == signal.SIGPIPE, b[9]

    def sendto(self, fd: int, payload: bytes, flags: int) -> SendResult:
        buf = ctypes.c_char_p(payload)  # points into the bytes object; kept alive until the join
        return self.call(NR_SENDTO, fd, ctypes.cast(buf, ctypes.c_void_p).value or 0, len(payload), flags)

    def sendmsg(self, fd: int, payload: bytes, iov_lens: tuple[int, ...], flags: int) -> SendResult:
        buf = ctypes.c_char_p(payload)
        base = ctypes.cast(buf, ctypes.c_void_p).value or 0
        iov = (_IoVec * len(iov_lens))()
        pos = 0
        for i, n in enumerate(iov_lens):
            iov[i].base, iov[i].len = base + pos, n
            pos += n
        msg = _MsgHdr(iov=ctypes.addressof(iov), iovlen=len(iov_lens))
        return self.call(NR_SENDMSG, fd, ctypes.addressof(msg), flags)

    def sendfile(self, sock_fd: int, file_fd: int, count: int) -> SendResult:
        self._offset.value = 0
        return self.call(NR_SENDFILE, sock_fd, file_fd, ctypes.addressof(self._offset), count)

    def splice(self, pipe_r: int, sock_fd: int, count: int, flags: int) -> SendResult:
        return self.call(NR_SPLICE, pipe_r, 0, sock_fd, 0, count, flags)


def raw_thread() -> RawThread | None:
    """A RawThread, or None where it cannot work (then fresh threads are Python threads)."""
    try:
        return RawThread()
    except (OSError, ValueError, AttributeError):
        return None


class Executor:
    """Runs cases one after the other on one backend, in the calling (main) thread."""

    def __init__(self, backend: Backend, raw_threads: bool = True) -> None:
        self.backend = backend
        self.raw = raw_thread() if raw_threads else None
        self.main_tid = threading.get_native_id()

    def run(self, case: Case) -> Outcome:
        while take_sigpipe():  # a stray signal from a previous case must not be charged to this one
            pass
        topo = Topology.connect(case)
        try:
            prog = self.backend.prepare(case)
            try:
                return _CaseRun(self, case, topo, prog).run()
            finally:
                prog.finish()  # every key deleted and the program detached before the sockets close
        finally:
            topo.close_all()


class _CaseRun:
    """The state of one case while it runs."""

    def __init__(self, ex: Executor, case: Case, topo: Topology, prog: CaseProgram) -> None:
        self.ex = ex
        self.case = case
        self.topo = topo
        self.prog = prog
        self.runs: list[Run] = []
        self.send = _in_fresh_thread if case.fresh_thread else self._in_main_thread
        self.raw = ex.raw if case.fresh_thread else None
        # fresh_thread: every send has a thread of its own, so a record's tid names its event and
        # the records are read once, at the end (reading them costs a decode of all of them).
        self.sender_of: dict[int, tuple[int, str]] = {}  # tid -> (event index, endpoint)

    def _in_main_thread(self, call: Callable[..., int], *args: Any) -> SendResult:
        return _issue(call, *args)

    def run(self) -> Outcome:
        rc = self.prog.attach()  # step 4: before any insert (spec §1.1: a psock captures the programs at insert)
        if rc != 0:
            raise CaseSetupError(f"BPF_PROG_ATTACH of the verdict program failed: {errno_ret(-rc)}")
        inserts = tuple(
            _ret(self.prog.insert(e.key, self.topo.socks[e.ep].fileno(), BPF_ANY)) for e in self.case.inserts
        )
        events = [self.event(i, ev) for i, ev in enumerate(self.case.events)]
        self.topo.push_pending_frames()
        endpoints = drain(self.case, self.topo)
        run_count, raws = self.prog.runs()
        if self.case.fresh_thread:
            self._attribute_by_thread(raws)
        return Outcome(
            side="kernel",
            inserts=inserts,
            events=tuple(events),
            runs=tuple(self.runs),
            run_count=run_count,
            endpoints=endpoints,
        )

    # ---- events ------------------------------------------------------------------------

    def event(self, i: int, ev: Event) -> EventResult:
        handler = _HANDLERS[type(ev)]
        return handler(self, i, ev)

    def _sock(self, ep: str) -> socket.socket | None:
        return self.topo.sock(ep)

    def _sent(self, i: int, ep: str, result: SendResult) -> EventResult:
        ret, sigpipe, tid = result
        if self.case.fresh_thread:
            # Thread ids are handed out cyclically (pid_max apart), so none repeats within a case.
            self.sender_of[tid] = (i, ep)
        elif len(self.runs) < MAX_RUN_RECORDS:
            self._collect_runs(i, ep, tid)
        return EventResult(ret=ret, sigpipe=sigpipe)

    def _attribute_by_thread(self, raws: list[RawRun]) -> None:
        """Each record's event is the one whose fresh thread has the record's tid.  A tid
        that no send thread had gets task "?<tid>" and the endpoint its context names."""
        endpoint_at = self.topo.endpoint_at
        for raw in raws:
            sender = self.sender_of.get(raw.tid)
            if sender is not None:
                self.runs.append(to_run(raw, sender[1], sender[0], endpoint_at))
            else:
                ep = endpoint_at(raw.local_ip, raw.local_port, None) or "?"
                self.runs.append(to_run(raw, ep, f"?{raw.tid}", endpoint_at))

    def _collect_runs(self, i: int, ep: str, tid: int) -> None:
        """Records that appeared during event i: the program runs only inside a send
        syscall (tcp_bpf_sendmsg, spec §3), so they all belong to this event."""
        _, raws = self.prog.runs()
        endpoint_at = self.topo.endpoint_at
        for raw in raws[len(self.runs) :]:
            self.runs.append(to_run(raw, ep, task_of(raw.tid, i, tid), endpoint_at))

    def on_send(self, i: int, ev: Send) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        payload = self.case.payload_for(i)
        flags = _flags(ev.flags, SEND_FLAGS)
        if self.raw is not None:
            return self._sent(i, ev.ep, self.raw.sendto(sock.fileno(), payload, flags))
        return self._sent(i, ev.ep, self.send(sock.send, payload, flags))

    def on_sendmsg(self, i: int, ev: SendMsg) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        if self.raw is not None:
            result = self.raw.sendmsg(sock.fileno(), self.case.payload_for(i), ev.iov, _flags(ev.flags, SEND_FLAGS))
            return self._sent(i, ev.ep, result)
        view = memoryview(self.case.payload_for(i))
        iov = []
        pos = 0
        for n in ev.iov:
            iov.append(view[pos : pos + n])
            pos += n
        return self._sent(i, ev.ep, self.send(sock.sendmsg, iov, (), _flags(ev.flags, SEND_FLAGS)))

    def on_sendfile(self, i: int, ev: SendFile) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        # A fresh memfd per sendfile: on kernels with sendpage (<= 6.4) a corked element keeps a
        # reference to the file's page (spec §8.2), so rewriting one shared file would change it.
        fd = os.memfd_create("diffuzz-sendfile", os.MFD_CLOEXEC)
        try:
            _write_all(fd, self.case.payload_for(i))
            if self.raw is not None:
                result = self.raw.sendfile(sock.fileno(), fd, ev.len)
            else:
                result = self.send(_sendfile, sock.fileno(), fd, ev.len)
        finally:
            os.close(fd)
        return self._sent(i, ev.ep, result)

    def on_splice(self, i: int, ev: Splice) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
        try:
            # MAX_SPLICE is one empty pipe's capacity, so the write completes; the write end is
            # non-blocking only so that a smaller pipe could never hang the worker.  It is closed
            # before the splice: with no writer left, splice never waits for more data.  (Only the
            # write end: an O_NONBLOCK read end would add SPLICE_F_NONBLOCK, fs/splice.c do_splice.)
            os.set_blocking(pipe_w, False)
            try:
                _write_all(pipe_w, self.case.payload_for(i))
            except BlockingIOError:
                pass
            os.close(pipe_w)
            pipe_w = -1
            flags = _flags(ev.flags, SPLICE_FLAGS)
            if self.raw is not None:
                result = self.raw.splice(pipe_r, sock.fileno(), ev.len, flags)
            else:
                result = self.send(_splice, pipe_r, sock.fileno(), ev.len, flags)
        finally:
            os.close(pipe_r)
            if pipe_w >= 0:
                os.close(pipe_w)
        return self._sent(i, ev.ep, result)

    def on_recv(self, i: int, ev: Recv) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        self.topo.push_pending_frames()
        flags = socket.MSG_DONTWAIT | (socket.MSG_PEEK if ev.peek else 0)
        try:
            data = sock.recv(ev.len, flags)
        except OSError as e:
            return EventResult(ret=errno_ret(e.errno))
        return EventResult(ret=len(data), data=Data(data))

    def on_fionread(self, i: int, ev: Fionread) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        self.topo.push_pending_frames()
        return EventResult(ret=fionread(sock))

    def on_close(self, i: int, ev: Close) -> EventResult:
        if self._sock(ev.ep) is None:
            return _EBADF
        self.topo.push_pending_frames()  # held bytes never meet a close (docs/execution.md)
        self.topo.close(ev.ep, ev.rst)
        return EventResult(ret=None)

    def on_shutdown(self, i: int, ev: Shutdown) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        self.topo.push_pending_frames()
        try:
            sock.shutdown(SHUT_HOW[ev.how])
        except OSError as e:
            return EventResult(ret=errno_ret(e.errno))
        return EventResult(ret=0)

    def on_map_delete(self, i: int, ev: MapDelete) -> EventResult:
        return EventResult(ret=_ret(self.prog.delete(ev.key)))

    def on_map_insert(self, i: int, ev: MapInsert) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        return EventResult(ret=_ret(self.prog.insert(ev.key, sock.fileno(), ev.flags)))

    def on_detach(self, i: int, ev: Detach) -> EventResult:
        return EventResult(ret=_ret(self.prog.detach()))

    def on_attach(self, i: int, ev: Attach) -> EventResult:
        return EventResult(ret=_ret(self.prog.attach()))


_HANDLERS: dict[type, Callable[[_CaseRun, int, Any], EventResult]] = {
    Send: _CaseRun.on_send,
    SendMsg: _CaseRun.on_sendmsg,
    SendFile: _CaseRun.on_sendfile,
    Splice: _CaseRun.on_splice,
    Recv: _CaseRun.on_recv,
    Fionread: _CaseRun.on_fionread,
    Close: _CaseRun.on_close,
    Shutdown: _CaseRun.on_shutdown,
    MapDelete: _CaseRun.on_map_delete,
    MapInsert: _CaseRun.on_map_insert,
    Detach: _CaseRun.on_detach,
    Attach: _CaseRun.on_attach,
}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
