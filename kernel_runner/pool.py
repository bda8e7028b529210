"""A pool of long-lived kernel workers (kernel_runner/worker.py), one case in flight at a time
per worker (plus `depth - 1` queued in its pipe, so a worker never waits for the pool).

    with KernelPool(jobs=2, backend="interp", deadline=10.0) as pool:
        outcome = pool.run(case)
        for outcome in pool.imap(cases):   # every worker busy, outcomes in input order
            ...

What comes back for a case is always an Outcome (side "kernel"):
- a normal outcome, notes {"kernel", "backend", "elapsed_us"};
- a hang: the worker did not answer within `deadline` seconds of starting the case.  It is
  killed by its pid (SIGKILL) and replaced; the outcome has hang=True, no observations, and
  notes["hang"] says why.  compare.py reports it as a difference in `hang`;
- an error: the worker raised while running the case (bad case, backend failure), or the
  worker died (exit, signal) while running it, or answered something that is not an
  outcome.  The outcome has hang=False, no observations, and notes["error"] says what
  happened.  A dead worker is replaced.  Callers must check `is_error(outcome)` before
  comparing: an error outcome observed nothing, it is not a kernel behaviour.
- a crash (VM workers only, kernel_runner/vm/): the guest kernel died while running the case.
  notes["crash"] says so with the first dying line of the console, notes["console"] has its
  last lines; no observations; the VM is replaced.  A crash is the kernel's finding, not an
  error outcome.
Cases queued behind a hung or dead worker's current case never ran; they are re-run on
another worker.  With kernel="vm:NAME" every worker is a VM of that fetched kernel.

Start-up: a worker that cannot start (not root, no BPF, backend missing) answers {"fatal"}
instead of {"ready"}; the pool raises KernelUnsupported with the worker's own message.

Workers are pinned (pin=True): worker i runs on the i-th CPU this process may use, so each
fresh send thread starts on the CPU of the thread that waits for it (executor.py).

The pipe protocol is worker.py's: one frame each way per case (diffuzz/contract/wire.py), after
the worker's JSON hello line.  The pool writes without blocking (a large case never deadlocks
against a large outcome).

Not thread-safe: one thread drives a pool.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.contract.wire import OutOfStep, frame, frames, unframe
from kernel_runner.backend import KernelUnsupported, WorkerStopped
from kernel_runner.worker_process import WorkerProcess

START_TIMEOUT = 60.0  # a bcc backend imports bcc and LLVM at start-up: give it time


def is_error(outcome: Outcome) -> bool:
    """True for an outcome that observed nothing because the run failed (see the module doc)."""
    return "error" in outcome.notes


# Signals that, sent to a worker, ask the whole campaign to stop (kernel_runner/worker.py exits
# with 128 + the number after its case; killed by one before it could, the same).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                          signal.SIGUSR2})


class KernelPool:
    def __init__(self, jobs: int | None = None, backend: str = "interp", deadline: float = 10.0,
                 depth: int = 2, pin: bool = True, kernel: str = "host") -> None:
        """jobs workers (default: one per CPU) of `backend`; `deadline` seconds per case; `depth`
        cases in flight per worker; `pin` puts worker i on the i-th CPU this process may use.
        `kernel` "vm:NAME" runs each worker in a VM of that fetched kernel (kernel_runner/vm/),
        with the deadline stretched by the guest's slowdown."""
        self.jobs = jobs if jobs is not None else (os.cpu_count() or 1)
        if self.jobs < 1 or depth < 1 or deadline <= 0:
            raise ValueError("KernelPool needs jobs >= 1, depth >= 1 and a positive deadline")
        self.backend = backend
        self.kernel = kernel
        self._vm: Any = None
        if kernel.startswith("vm:"):
            from kernel_runner.vm.machine import SLOWDOWN, VmKernel

            self._vm = VmKernel.open(kernel[len("vm:"):])
            deadline *= SLOWDOWN
        elif kernel != "host":
            raise KernelUnsupported(f"unknown kernel {kernel!r}: use host or vm:NAME (diffuzz kernels)")
        self.deadline = deadline
        self.depth = depth
        self.kernel_release = os.uname().release
        # Set when a worker ended because of a stop signal someone sent it (STOP_SIGNALS): the
        # campaign should stop, cleanly, as if the signal had come to the engine.
        self.stop_request: str | None = None
        self._sel = selectors.DefaultSelector()
        self._workers: list[WorkerProcess] = []
        self._queue: deque[tuple[int, bytes]] = deque()  # cases waiting for a worker
        self._results: dict[int, Outcome] = {}
        self._seq = 0
        cpus = sorted(os.sched_getaffinity(0))
        self._cpus: list[int | None] = [cpus[i % len(cpus)] if pin else None for i in range(self.jobs)]
        try:
            starting = [self._spawn(cpu) for cpu in self._cpus]
            self._workers = starting
            for w in starting:
                self._wait_ready(w)
                self._sel.register(w.rfd, selectors.EVENT_READ, w)
        except BaseException:
            self.close()
            raise
        if self._vm is not None:
            self.kernel_release = str(starting[0].info.get("kernel", self.kernel))

    def _spawn(self, cpu: int | None) -> WorkerProcess:
        if self._vm is not None:
            from kernel_runner.vm.machine import VmWorker

            return VmWorker(self._vm, self.backend, cpu)
        return WorkerProcess(self.backend, cpu)

    # ---- public -------------------------------------------------------------------------

    def run(self, case: Case) -> Outcome:
        return next(self.imap([case]))

    def imap(self, cases: Iterable[Case]) -> Iterator[Outcome]:
        """Run cases on every worker at once; yield their outcomes in input order.

        Iterations may nest (a run() while an imap() is open, e.g. to re-check a case before
        reading on): each one tracks its own sequence numbers, so neither takes the other's
        answers and neither's queued cases are dropped by the other."""
        it = iter(cases)
        mine: deque[int] = deque()  # this iteration's seqs not yet yielded, in input order
        window = self.jobs * self.depth * 4  # results held for ordering, at most
        exhausted = False
        try:
            while True:
                while not exhausted and len(mine) < window and len(self._queue) < self.jobs * self.depth:
                    try:
                        case = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    self._queue.append((self._seq, frame(case)))
                    mine.append(self._seq)
                    self._seq += 1
                self._dispatch()
                if mine and mine[0] in self._results:
                    yield self._results.pop(mine.popleft())
                    continue
                if exhausted and not mine:
                    return
                self._pump()
        finally:
            # Ended or abandoned: this iteration's queued cases leave the queue; the ones workers
            # hold are finished (their answers must not be read as a later case's) and dropped.
            if mine:
                ours = set(mine)
                self._queue = deque(item for item in self._queue if item[0] not in ours)
                while any(seq in ours for w in self._workers for seq, _ in w.inflight):
                    self._pump()
                for seq in ours:
                    self._results.pop(seq, None)

    def pids(self) -> list[int]:
        """The worker processes' pids (they change when a worker is replaced)."""
        return [w.pid for w in self._workers]

    def close(self) -> None:
        """End every worker: EOF on its stdin ends its loop; one that does not exit is killed.
        A VM pool's run directory (sockets, console logs) goes too, whatever happened before."""
        try:
            for w in self._workers:
                if w.proc.returncode is None:
                    try:
                        self._sel.unregister(w.rfd)
                    except (KeyError, ValueError):
                        pass
                    w.reap()
        finally:
            self._workers = []
            self._sel.close()
            if self._vm is not None:
                self._vm.close()
                self._vm = None

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- the event loop -------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give queued cases to workers, filling every worker to one case before any gets two."""
        for level in range(1, self.depth + 1):
            for w in self._workers:
                if self._queue and len(w.inflight) < level:
                    seq, line = self._queue.popleft()
                    if not w.inflight:
                        w.started = time.monotonic()
                    w.inflight.append((seq, line))
                    w.wbuf += line
                    w.flush()
                    self._watch(w)

    def _watch(self, w: WorkerProcess) -> None:
        """Watch w's stdin (its own fd) for room while bytes wait to be written to it."""
        watched = w.wfd in self._sel.get_map()
        if w.wbuf and not watched:
            self._sel.register(w.wfd, selectors.EVENT_WRITE, w)
        elif not w.wbuf and watched:
            self._sel.unregister(w.wfd)

    def _pump(self) -> None:
        """Wait for one round of worker I/O (or a deadline) and handle it.

        A worker is declared hung only if it is past its deadline and the select that just
        returned found nothing from it: an answer that arrived while the caller was not
        iterating is still in the pipe, and select sees it first."""
        busy = [w for w in self._workers if w.inflight]
        timeout = min((w.started + self.deadline - time.monotonic() for w in busy), default=None)
        heard: set[WorkerProcess] = set()
        for key, _mask in self._sel.select(None if timeout is None else max(timeout, 0.0)):
            w: WorkerProcess = key.data
            if w not in self._workers:
                continue  # replaced earlier in this round
            heard.add(w)
            if key.fd == w.wfd:
                w.flush()
                self._watch(w)
                continue
            try:
                chunk = os.read(w.rfd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                self._died(w)
                continue
            w.rbuf += chunk
            self._answers(w)
        now = time.monotonic()
        for w in busy:
            if w in self._workers and w not in heard and w.inflight and w.started + self.deadline <= now:
                self._hung(w)

    def _answers(self, w: WorkerProcess) -> None:
        out_of_step: OutOfStep | None = None
        try:
            payloads = frames(w.rbuf)
        except OutOfStep as e:  # the whole frames before it still answer their cases
            payloads, out_of_step = e.payloads, e
        for payload in payloads:
            if not w.inflight:
                continue  # nothing asked: ignore
            seq, _ = w.inflight.popleft()
            w.started = time.monotonic()
            try:
                self._results[seq] = unframe(payload, Outcome)
            except ValueError as e:
                self._results[seq] = self._failed("error", f"worker {w.pid} answered something that is not an "
                                                  f"outcome ({e})")
        if out_of_step is not None:  # nothing more it says can be matched to a case
            w.rbuf.clear()
            self._replace(w, "error", f"worker {w.pid} answered something that is not an outcome ({out_of_step}); "
                          "it was replaced")

    def _hung(self, w: WorkerProcess) -> None:
        self._replace(w, "hang", f"no answer within {self.deadline:g} s; worker {w.pid} was killed (SIGKILL) "
                      "and replaced", w.report())

    def _wait_ready(self, w: WorkerProcess) -> None:
        """w's start-up line; WorkerStopped when a stop signal ended it before that."""
        try:
            w.wait_ready(START_TIMEOUT)
        except KernelUnsupported as e:
            if self._stopped(w):
                raise WorkerStopped(f"{self.stop_request} while it was starting") from e
            raise

    def _stopped(self, w: WorkerProcess) -> bool:
        """Did w end because of a stop signal somebody sent it?  Sets stop_request if so."""
        code = w.proc.returncode
        stopped = w.stopped_by_signal() or (
            code is not None and (-code in STOP_SIGNALS or code - 128 in STOP_SIGNALS))
        if stopped and self.stop_request is None:
            sent = signal.Signals(abs(code) % 128).name if code else "a stop signal"
            self.stop_request = f"kernel worker {w.pid} was sent {sent}"
        return stopped

    def _died(self, w: WorkerProcess) -> None:
        status = w.reap()
        stopped = self._stopped(w)
        extra = w.report()
        if "crash" in extra and not stopped:
            # A guest kernel that died: a finding (the kernel's), not a runner failure.
            line = extra.pop("crash")
            self._replace(w, "crash", f"the guest kernel died while running this case ({line}); the VM "
                          f"({status}) was replaced", extra)
            return
        self._replace(w, "error", f"worker {w.pid} died ({status}) while running this case; it was replaced",
                      extra)

    def _replace(self, w: WorkerProcess, kind: str, why: str, extra: dict[str, str] | None = None) -> None:
        """Take w out, fail its current case (if it had one), queue the cases behind it again, start a
        new worker."""
        try:
            self._sel.unregister(w.rfd)
        except (KeyError, ValueError):
            pass
        try:
            self._sel.unregister(w.wfd)
        except (KeyError, ValueError):
            pass
        if w.proc.returncode is None:
            w.kill()
        if w.inflight:  # a worker can also die idle (a SIGTERM to the whole process group)
            seq, _ = w.inflight.popleft()
            self._results[seq] = self._failed(kind, why, extra)
            self._queue.extendleft(reversed(w.inflight))
        i = self._workers.index(w)
        fresh = self._spawn(w.cpu)
        self._workers[i] = fresh
        self._wait_ready(fresh)
        self._sel.register(fresh.rfd, selectors.EVENT_READ, fresh)
        self._dispatch()

    def _failed(self, kind: str, why: str, extra: dict[str, str] | None = None) -> Outcome:
        notes = {"kernel": self.kernel_release, "backend": self.backend, **(extra or {}), kind: why}
        return Outcome(side="kernel", hang=kind == "hang", notes=notes)
