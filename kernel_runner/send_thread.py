"""The send syscalls, each in the thread that issues it: fresh threads and SIGPIPE.

Two rules of the send path (kernel_runner/executor.py runs the events):
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
- Named sender threads (a send's `thread`, diffuzz/contract/events.py).  Every send that names
  thread N is issued by one SenderThread, created at that thread's first send (its task_frag is
  empty until then, as if it had started with the case) and kept until the case ends, so its
  sends share its page frag.  It is a Python thread that waits on a lock between sends: waiting
  allocates nothing from task_frag, so only the case's own sends touch the frag.
"""

from __future__ import annotations

import _thread
import ctypes
import mmap
import os
import platform
import signal
import threading
from collections.abc import Callable
from typing import Any

from diffuzz.contract.outcome import Ret, errno_ret

_SIGPIPE = (signal.SIGPIPE,)


def block_sigpipe() -> None:
    """Call once, in the main thread, before any thread is started (see the module doc)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)


def take_sigpipe() -> bool:
    """True if a SIGPIPE was pending for this thread (or the process); it is consumed."""
    return signal.sigtimedwait(_SIGPIPE, 0) is not None


# ---- the send syscalls; each runs in the issuing thread and returns (ret, sigpipe, tid) ----

SendResult = tuple[Ret, bool, int]


def issue(call: Callable[..., int], *args: Any) -> SendResult:
    try:
        ret: Ret = call(*args)
    except OSError as e:
        ret = errno_ret(e.errno)
    return ret, take_sigpipe(), threading.get_native_id()


def sendfile(sock_fd: int, file_fd: int, count: int) -> int:
    return os.sendfile(sock_fd, file_fd, 0, count)


def splice(pipe_r: int, sock_fd: int, count: int, flags: int) -> int:
    return os.splice(pipe_r, sock_fd, count, flags=flags)


def in_fresh_thread(call: Callable[..., int], *args: Any) -> SendResult:
    """Run issue(call, *args) in a newly created thread and wait for it."""
    done = _thread.allocate_lock()
    done.acquire()
    box: list[Any] = []

    def body() -> None:
        try:
            box.append(issue(call, *args))
        except BaseException as e:  # a bug, not a syscall error: hand it to the worker thread
            box.append(e)
        finally:
            done.release()

    _thread.start_new_thread(body, ())
    done.acquire()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


class SenderThread:
    """One named sender thread of a case (module docstring): issues its sends in order."""

    def __init__(self) -> None:
        self._go = _thread.allocate_lock()
        self._go.acquire()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._job: tuple[Callable[..., int], tuple[Any, ...]] | None = None
        self._box: Any = None
        self._alive = True
        _thread.start_new_thread(self._body, ())

    def _body(self) -> None:
        while True:
            self._go.acquire()
            job = self._job
            if job is None:
                self._done.release()
                return
            try:
                self._box = issue(job[0], *job[1])
            except BaseException as e:  # a bug, not a syscall error: hand it to the worker thread
                self._box = e
            self._done.release()

    def __call__(self, call: Callable[..., int], *args: Any) -> SendResult:
        self._job = (call, args)
        self._go.release()
        self._done.acquire()
        box, self._box = self._box, None
        if isinstance(box, BaseException):
            raise box
        return box  # type: ignore[no-any-return]

    def stop(self) -> None:
        """End the thread (it returns from its body) and wait until it has."""
        if self._alive:
            self._alive = False
            self._job = None
            self._go.release()
            self._done.acquire()


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
