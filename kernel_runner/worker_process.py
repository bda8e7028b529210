"""One kernel worker process (kernel_runner/worker.py) and the pool's side of its pipes.

KernelPool (pool.py) drives these; kernel_runner/vm/machine.py's VmWorker is the same thing with a
qemu VM and a virtio-serial channel in place of a subprocess and its pipes.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from kernel_runner.backend import KernelUnsupported

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
CLOSE_TIMEOUT = 5.0
# Workers run at a lower priority than the process that feeds them.  With 2 workers and the fuzz
# loop on 2 cores, a worker woken by the loop's write took the loop's CPU, and the other worker
# waited for its next case meanwhile: at nice 10 the differential loop ran 846-912 cases/s
# against 673-885 at nice 0, in turns (bench/RESULTS.md).  A worker still gets every cycle the
# loop does not use, and a case's deadline counts from when it started.  A niceness, not an
# increment: the workers of a process that runs lower already (the triage process) stay at its.
WORKER_NICE = 10


def nice_at_least(n: int) -> None:
    """Lower this process's priority to niceness n, unless it is lower already (a worker of the
    triage process, which runs at its own, lower TRIAGE_NICE, stays there)."""
    now = os.getpriority(os.PRIO_PROCESS, 0)
    if n > now:
        os.nice(n - now)


class WorkerProcess:
    """One worker subprocess and the pool's side of its pipes."""

    def __init__(self, backend: str, cpu: int | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        pin = [] if cpu is None else ["--cpu", str(cpu)]
        self.cpu = cpu
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernel_runner.worker", "--backend", backend, "--nice", str(WORKER_NICE), *pin],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._pool_side(self.proc.stdout.fileno(), self.proc.stdin.fileno())

    def _pool_side(self, rfd: int, wfd: int) -> None:
        """The pool's state for this worker's channel (a VM's descriptors come later: rfd, wfd -1)."""
        self.pid = self.proc.pid
        self.rfd = rfd
        self.wfd = wfd
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.inflight: deque[tuple[int, bytes]] = deque()  # (seq, case frame), oldest = running
        self.started = 0.0  # when the oldest in-flight case started (its deadline counts from here)
        self.info: dict[str, Any] = {}

    def wait_ready(self, timeout: float) -> None:
        """Read the start-up line; KernelUnsupported if the worker cannot run cases."""
        end = time.monotonic() + timeout
        while b"\n" not in self.rbuf:
            left = end - time.monotonic()
            if left <= 0:
                self.kill()
                raise KernelUnsupported(f"kernel worker {self.pid} did not start within {timeout:g} s")
            sel = selectors.DefaultSelector()
            sel.register(self.rfd, selectors.EVENT_READ)
            ready = sel.select(left)
            sel.close()
            if ready:
                chunk = os.read(self.rfd, 65536)
                if not chunk:
                    status = self.reap()
                    raise KernelUnsupported(f"kernel worker exited ({status}) before it was ready; see its stderr")
                self.rbuf += chunk
        line, _, rest = bytes(self.rbuf).partition(b"\n")
        self.rbuf = bytearray(rest)
        try:
            hello = json.loads(line)
        except ValueError:
            hello = {"fatal": f"kernel worker said {line[:200]!r} instead of hello"}
        if "ready" not in hello:
            self.reap()
            raise KernelUnsupported(str(hello.get("fatal", hello)))
        self.info = hello["ready"]
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)

    def flush(self) -> None:
        """Write as much of wbuf as the pipe takes without blocking."""
        if self.wbuf:
            try:
                n = os.write(self.wfd, self.wbuf)
            except BlockingIOError:
                return
            except BrokenPipeError:
                self.wbuf.clear()  # the worker is gone; its stdout's EOF reports it (_died)
                return
            del self.wbuf[:n]

    def report(self) -> dict[str, str]:
        """Notes for the case this worker was running when it died or hung (a VM adds its console)."""
        return {}

    def stopped_by_signal(self) -> bool:
        """Did a stop signal end it (beyond what its exit status says)?"""
        return False

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reap()

    def reap(self) -> str:
        """Wait for the process and close our pipe ends; how it ended, in words."""
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        try:
            code = self.proc.wait(timeout=CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            code = self.proc.wait()
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"
