"""The triage process: confirmation and minimization beside the fuzz loop, not inside it.

The fuzz process forks it when the campaign starts (fork, not spawn: the child gets the model
as the loop has it, whatever was bound or planted into it), and hands it one `Mismatch` at a
time over a pipe; the child triages it (triage.py) on a kernel worker of its own and the
independent backend, and sends a `Triaged` back.  The loop polls between cases and goes on
fuzzing meanwhile.  Only the fuzz process writes files: the child saves nothing, so a child that
dies or is killed loses nothing (what it held is saved under unconfirmed/ by the loop).

Queue, bounded by bucket: the loop sends only the first mismatch of each (fields, helpers, events)
key (the rest only count, engine side), and the queue holds at most PER_ROOT mismatches whose
first difference has the same kind (signature.root_kind, what names their bucket): one cause
shows in many keys, and while PER_ROOT of them wait, more of the same only count (`has_room`).
A key turned away is not remembered, so it is triaged when it comes again with room.

Stopping: `finish(grace)` lets the queue go on for `grace` seconds, then asks the child to stop
(its minimizer ends at once and the case is confirmed as it is), takes back what it returns, and
hands back what was never triaged.  Signals: the child has its own handlers; any stop signal makes
it finish the current case quickly and tell the loop (`stop_request`), which ends the campaign
the same way a signal to a kernel worker does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.confirm import Independent
from diffuzz.engine.triage import Mismatch, Triage, Triaged
from diffuzz.engine.zone import GenConfig
from kernel_runner.backend import WorkerStopped
from kernel_runner.pool import STOP_SIGNALS
from kernel_runner.worker_process import WORKER_NICE, nice_at_least
from sim.profile import Profile

PER_ROOT = 2  # mismatches with the same root kind waiting or running
QUEUE_MAX = 64  # mismatches waiting or running in all
STOP_WAIT = 30.0  # seconds the child gets, once asked to stop, to return the case it holds
# Triage, and its kernel and bcc workers, run below the loop's workers (WORKER_NICE): triage takes
# what the loop leaves.  With the loop's workers lowered and triage not, a 10-minute run against
# the wrong profile (triage busy all along) kept 77% of the agreeing rate: bench/RESULTS.md.
TRIAGE_NICE = WORKER_NICE + 5


class TriageProcess:
    """The fuzz process's side.  Not thread-safe: the loop's thread drives it."""

    def __init__(self, make_kernel: Callable[[], Any], model: Callable[[Case], Outcome], independent: Independent,
                 gen: GenConfig, minimize_seconds: float, profile: Profile | None = None) -> None:
        self.minimize_seconds = minimize_seconds
        self.queue: deque[Mismatch] = deque()
        self.running: Mismatch | None = None
        self.stop_request: str | None = None  # the child was signalled (or its kernel worker was)
        self.dead: str | None = None  # why the child can take no more work
        self.budget_until: float | None = None  # during finish(): minimizing must end by then
        self._asked_stop = False
        ctx = multiprocessing.get_context("fork")
        ours, theirs = ctx.Pipe()
        self._conn: Connection = ours
        self._proc = ctx.Process(target=_serve, args=(theirs, ours, make_kernel, model, independent, gen, profile),
                                 name="diffuzz-triage", daemon=False)
        self._proc.start()
        theirs.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def pending(self) -> int:
        return len(self.queue) + (self.running is not None)

    def has_room(self, root: str) -> bool:
        """Room for one more mismatch whose first difference is of kind `root`."""
        held = [*self.queue, *([self.running] if self.running is not None else [])]
        return len(held) < QUEUE_MAX and sum(j.root == root for j in held) < PER_ROOT

    def submit(self, job: Mismatch) -> str | None:
        """Queue a mismatch; None, or why it was not taken (the caller keeps it as unconfirmed)."""
        if self.dead:
            return f"the triage process ended: {self.dead}"
        if self.stop_request or self._asked_stop:
            return "the campaign is stopping"
        self.queue.append(job)
        self._send_next()
        return None

    def poll(self, timeout: float = 0.0) -> list[Triaged]:
        """What the child has finished (waiting up to `timeout` for the first message)."""
        done: list[Triaged] = []
        try:
            while not self.dead and self._conn.poll(timeout):
                timeout = 0.0
                self._receive(self._conn.recv(), done)
        except (EOFError, OSError):
            code = self._exitcode()
            self._died(f"it exited ({code})")
            if code.startswith("killed by"):  # a signal to any process of a campaign ends it
                self.stop_request = f"the triage process was {code}"
        self._send_next()
        return done

    def take_held(self) -> list[Mismatch]:
        """What a dead child held, running and queued (for unconfirmed/, at once)."""
        held = [*([self.running] if self.running is not None else []), *self.queue]
        self.running = None
        self.queue.clear()
        return held

    def finish(self, grace: float) -> tuple[list[Triaged], list[Mismatch]]:
        """End triage: go on for up to `grace` seconds, then stop the child.  Returns what was
        triaged meanwhile and what never was (for unconfirmed/)."""
        done: list[Triaged] = []
        end = time.monotonic() + grace
        self.budget_until = end
        while self.pending() and not self.dead and time.monotonic() < end and not self.stop_request:
            done += self.poll(min(0.2, max(0.0, end - time.monotonic())))
        left = list(self.queue)
        self.queue.clear()
        if self.running is not None and not self.dead:
            self._ask_stop()
            stop_by = time.monotonic() + STOP_WAIT
            while self.running is not None and not self.dead and time.monotonic() < stop_by:
                done += self.poll(0.2)
        if self.running is not None:
            left.insert(0, self.running)
            self.running = None
        self.close()
        return done, left

    def close(self) -> None:
        """Tell the child to quit and wait for it (its kernel worker goes with it); kill it if
        it does not end."""
        if self._conn.closed:
            return
        try:
            self._conn.send(("quit",))
        except OSError:
            pass
        self._proc.join(STOP_WAIT)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5.0)
        self._conn.close()

    # ---- the parent's half of the protocol ---------------------------------------------------

    def _budget(self) -> float:
        if self.budget_until is None:
            return self.minimize_seconds
        return max(0.0, min(self.minimize_seconds, self.budget_until - time.monotonic()))

    def _send_next(self) -> None:
        if self.running is not None or not self.queue or self.dead or self._asked_stop:
            return
        job = self.queue.popleft()
        try:
            # Once finish() began, the run's time is up: no bcc compile (as the loop did inline).
            self._conn.send(("job", job, self._budget(), self.budget_until is None))
        except OSError as e:
            self.queue.appendleft(job)
            self._last_words()
            self._died(f"cannot reach it: {e.strerror or e}")
            return
        self.running = job

    def _receive(self, msg: tuple[Any, ...], done: list[Triaged]) -> None:
        what = msg[0]
        if what == "done":
            done.append(msg[1])
            self.running = None
        elif what == "stop_request":
            self.stop_request = str(msg[1])
        elif what == "failed":
            self._died(str(msg[1]))

    def _last_words(self) -> None:
        """Read what a child that went away still said: a child whose kernel did not start says
        why and exits, and a write can meet the closed pipe before the loop read the reason."""
        try:
            while self._conn.poll(0):
                self._receive(self._conn.recv(), [])  # nothing was running: no result can be there
        except (EOFError, OSError):
            pass

    def _ask_stop(self) -> None:
        if not self._asked_stop:
            self._asked_stop = True
            try:
                self._conn.send(("stop",))
            except OSError:
                pass

    def _died(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
            held = " (what it held is kept under unconfirmed/)" if self.pending() else ""
            print(f"diffuzz: the triage process cannot go on: {why}{held}; the loop triages inline from now on",
                  file=sys.stderr, flush=True)

    def _exitcode(self) -> str:
        self._proc.join(1.0)
        code = self._proc.exitcode
        if code is None:
            return "still running"
        return f"killed by {signal.Signals(-code).name}" if code < 0 else str(code)


# ---- the child ---------------------------------------------------------------------------------


class _Child:
    """The triage process's loop: one message at a time, with its stop conditions."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.inbox: deque[tuple[Any, ...]] = deque()
        self.stopping = False
        self.signalled: int | None = None
        self.parent = os.getppid()
        self.kernel: Any = None
        self.told = False  # the fuzz process has heard why it must stop

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = signum  # handled between cases: a send from here could cut a message in two

    def should_stop(self) -> bool:
        """Checked by the minimizer between runs: a stop message, a signal, a lost parent."""
        self._read_available()
        return self.stopping or self.stop_reason() is not None or os.getppid() != self.parent

    def _read_available(self) -> None:
        try:
            while self.conn.poll(0):
                msg = self.conn.recv()
                if msg[0] == "stop":
                    self.stopping = True
                else:
                    self.inbox.append(msg)
        except (EOFError, OSError):
            self.stopping = True
            self.inbox.append(("quit",))

    def stop_reason(self) -> str | None:
        """Why the campaign must stop, when this process was signalled or its kernel worker was."""
        if self.signalled is not None:
            return f"{signal.Signals(self.signalled).name} to the triage process"
        return getattr(self.kernel, "stop_request", None)

    def next_message(self) -> tuple[Any, ...]:
        while not self.inbox:
            why = self.stop_reason()
            if why and not self.told:
                self.told = True
                self.conn.send(("stop_request", why))
            if os.getppid() != self.parent:
                return ("quit",)
            try:
                if self.conn.poll(0.2):
                    self._read_available()
            except (EOFError, OSError):
                return ("quit",)
        return self.inbox.popleft()


def _serve(conn: Connection, parents_end: Connection, make_kernel: Callable[[], Any],
           model: Callable[[Case], Outcome], independent: Independent, gen: GenConfig,
           profile: Profile | None) -> None:
    """The child's body (multiprocessing ends it with os._exit: no finalizer of the fuzz
    process's objects runs here)."""
    parents_end.close()
    _close_inherited(keep={0, 1, 2, conn.fileno()})
    nice_at_least(TRIAGE_NICE)  # before its workers start: they run at it too
    child = _Child(conn)
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, child.on_signal)
    try:
        child.kernel = make_kernel()
    except BaseException as e:
        if isinstance(e, WorkerStopped) or child.signalled is not None:
            conn.send(("stop_request", str(e) if isinstance(e, WorkerStopped) else child.stop_reason()))
        conn.send(("failed", f"its kernel worker did not start: {type(e).__name__}: {e}"))
        return
    triage = Triage(child.kernel, model, independent, gen, child.should_stop, profile)
    try:
        while True:
            msg = child.next_message()
            if msg[0] == "quit":
                break
            if msg[0] == "job":
                _, job, budget, check = msg
                conn.send(("done", triage.run(job, budget, check)))
    except (EOFError, BrokenPipeError):
        pass
    except BaseException as e:
        try:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
        except OSError:
            pass
    finally:
        independent.close()
        close = getattr(child.kernel, "close", None)
        if close is not None:
            close()


def _close_inherited(keep: set[int]) -> None:
    """Close the fuzz process's descriptors in the child: its kernel workers' pipes above all, so
    a worker still sees EOF when the fuzz process closes its end.  The objects that held them are
    never used here (and never finalized: the child ends with os._exit)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
