"""Runs one Case on the real kernel: set-up, every event, the drain, the clean-up.

docs/execution.md is the contract; this file follows it line by line.  The program comes
from a Backend (kernel_runner/backend.py), the sockets from topology.py, the final state from
drain.py, and the program's records are translated by records.py.

Three rules shape the send path:
- SIGPIPE and sender threads: kernel_runner/send_thread.py (each send-kind event runs in a new
  thread, or in the named sender thread it names, and the thread that issued it takes its
  SIGPIPE back).
- Which event ran a program.  A record carries the tid of the thread that ran it; its task
  is the index of the event whose thread has that tid ("?<tid>" for any other thread).  When
  every send has a thread of its own, the records are read once, after the drain; otherwise
  (named threads, or the worker's thread) they are read after each send (the program runs
  only inside a send syscall).
"""

from __future__ import annotations

import os
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
    peer_of,
)
from diffuzz.contract.outcome import MAX_RUN_RECORDS, Data, EventResult, Outcome, Ret, Run, errno_ret
from kernel_runner.backend import Backend, CaseProgram, RawRun
from kernel_runner.drain import drain, fionread
from kernel_runner.records import task_of, to_run
from kernel_runner.send_thread import (
    SenderThread,
    SendResult,
    in_fresh_thread,
    issue,
    raw_thread,
    sendfile,
    splice,
    take_sigpipe,
)
from kernel_runner.topology import Topology

BPF_ANY = 0
_EBADF = EventResult(ret="EBADF")  # an event on an endpoint the case already closed: no syscall


class CaseSetupError(RuntimeError):
    """The kernel refused a set-up step that must not fail (the first attach)."""


def _ret(rc: int) -> Ret:
    """A backend's 0-or-negative-errno as an outcome Ret."""
    return rc if rc >= 0 else errno_ret(-rc)


def _flags(names: tuple[str, ...], table: Any) -> int:
    value = 0
    for name in names:
        value |= table[name]
    return value


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
        self.send = in_fresh_thread if case.fresh_thread else self._in_main_thread
        self.raw = ex.raw if case.fresh_thread else None
        # Every send has a thread of its own: a record's tid names its event, and the records are
        # read once, at the end (reading them costs a decode of all of them).
        self.own_threads = case.fresh_thread and not case.shared_threads
        self.sender_of: dict[int, tuple[int, str]] = {}  # tid -> (event index, endpoint)
        self.named: dict[int, SenderThread] = {}  # the case's named sender threads, by id

    def _thread_for(self, ev: Any) -> Callable[..., SendResult] | None:
        """The named sender thread that issues ev, started at its first send; None if ev names none."""
        t = ev.thread
        if t is None:
            return None
        runner = self.named.get(t)
        if runner is None:
            runner = self.named[t] = SenderThread()
        return runner

    def _in_main_thread(self, call: Callable[..., int], *args: Any) -> SendResult:
        return issue(call, *args)

    def run(self) -> Outcome:
        rc = self.prog.attach()  # step 4: before any insert (spec §1.1: a psock captures the programs at insert)
        if rc != 0:
            raise CaseSetupError(f"BPF_PROG_ATTACH of the verdict program failed: {errno_ret(-rc)}")
        inserts = tuple(
            _ret(self.prog.insert(e.key, self.topo.socks[e.ep].fileno(), BPF_ANY)) for e in self.case.inserts
        )
        try:
            events = [self.event(i, ev) for i, ev in enumerate(self.case.events)]
        finally:
            for runner in self.named.values():
                runner.stop()
        self.topo.push_pending_frames()
        endpoints = drain(self.case, self.topo)
        run_count, raws = self.prog.runs()
        if self.own_threads:
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
        if self.own_threads:
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
        named = self._thread_for(ev)
        if self.raw is not None and named is None:
            return self._sent(i, ev.ep, self.raw.sendto(sock.fileno(), payload, flags))
        return self._sent(i, ev.ep, (named or self.send)(sock.send, payload, flags))

    def on_sendmsg(self, i: int, ev: SendMsg) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        named = self._thread_for(ev)
        if self.raw is not None and named is None:
            result = self.raw.sendmsg(sock.fileno(), self.case.payload_for(i), ev.iov, _flags(ev.flags, SEND_FLAGS))
            return self._sent(i, ev.ep, result)
        view = memoryview(self.case.payload_for(i))
        iov = []
        pos = 0
        for n in ev.iov:
            iov.append(view[pos : pos + n])
            pos += n
        return self._sent(i, ev.ep, (named or self.send)(sock.sendmsg, iov, (), _flags(ev.flags, SEND_FLAGS)))

    def on_sendfile(self, i: int, ev: SendFile) -> EventResult:
        sock = self._sock(ev.ep)
        if sock is None:
            return _EBADF
        # A fresh memfd per sendfile: on kernels with sendpage (<= 6.4) a corked element keeps a
        # reference to the file's page (spec §8.2), so rewriting one shared file would change it.
        fd = os.memfd_create("diffuzz-sendfile", os.MFD_CLOEXEC)
        try:
            _write_all(fd, self.case.payload_for(i))
            named = self._thread_for(ev)
            if self.raw is not None and named is None:
                result = self.raw.sendfile(sock.fileno(), fd, ev.len)
            else:
                result = (named or self.send)(sendfile, sock.fileno(), fd, ev.len)
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
            named = self._thread_for(ev)
            if self.raw is not None and named is None:
                result = self.raw.splice(pipe_r, sock.fileno(), ev.len, flags)
            else:
                result = (named or self.send)(splice, pipe_r, sock.fileno(), ev.len, flags)
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
        # A peer whose receive window is full takes neither the rest nor the FIN: no use waiting.
        full = self.topo.in_flight_to(peer_of(ev.ep)) > 0
        self.topo.close(ev.ep, ev.rst)
        if not full:
            self.topo.await_end(peer_of(ev.ep))
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
        # The FIN goes out behind whatever is still unsent: many small segments can outrun the
        # congestion window and wait for an ACK.  The model takes the FIN as arrived (the peer in
        # CLOSE_WAIT), so the runner waits for it before the next event looks (a map insert of the
        # peer checks its state: sock_map_sk_state_allowed).
        self.topo.settle()
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
