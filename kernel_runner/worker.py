"""The kernel worker process: `python -m kernel_runner.worker --backend interp`.

It enters its own network namespace once, loads the backend once, and then runs cases
until stdin ends.  The pipe protocol is one message each way per case:

    start-up  worker -> pool  {"ready": {"pid": …, "kernel": …, "backend": …}} on one line
                              or {"fatal": "<message>"} and exit status 2
    per case  pool -> worker  the case as a frame (diffuzz/contract/wire.py: what the pool sends)
                              or as JSON on one line (Case.to_json(indent=None): by hand, tests)
              worker -> pool  the Outcome the same way: a frame for a frame, a line for a line

A case that raises inside the worker (bad JSON, a bad frame, a backend error, a bug) still
gets exactly one answer back: an error outcome, `side` "kernel", no observations, and notes["error"]
saying what went wrong.  The loop goes on with the next case.  Every outcome's notes carry
"kernel" (os.uname().release), "backend" and "elapsed_us" (set-up to clean-up).

The protocol owns file descriptor 1: at start-up it is moved to a private fd and fd 1 is
pointed at stderr, so a stray print in a backend or a C library cannot corrupt it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from typing import IO, Any

from diffuzz.contract.case import Case, CaseError, loads_case
from diffuzz.contract.outcome import Outcome
from diffuzz.contract.wire import frame, read_message, unframe
from kernel_runner.backend import Backend, KernelUnsupported
from kernel_runner.executor import Executor
from kernel_runner.kmsg import KmsgWatch
from kernel_runner.netns import enter_new_netns
from kernel_runner.pidns import probe_pid_namespace
from kernel_runner.send_thread import block_sigpipe
from kernel_runner.worker_process import nice_at_least

# Backend name -> (module, class).  Imported only when asked for: bcc_backend pulls in bcc.
BACKENDS: Mapping[str, tuple[str, str]] = {
    "interp": ("kernel_runner.interp_backend", "InterpBackend"),
    "bcc": ("kernel_runner.bcc_backend", "BccBackend"),
}

EXIT_FATAL = 2
# A signal from outside (a user, `timeout`, systemd, `docker stop`) ends the whole campaign
# cleanly: the worker finishes the case it is running, answers it, and exits with 128 + the
# signal's number, which the pool reads as "stop" (kernel_runner/pool.py STOP_SIGNALS).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class _Stop:
    """The worker's answer to a stop signal: exit at once when idle, after the answer when busy."""

    def __init__(self) -> None:
        self.busy = False
        self.signum = 0
        for sig in STOP_SIGNALS:
            # One ignored when the worker started stays ignored: `nohup` (SIGHUP), a shell's
            # background job (SIGINT, SIGQUIT) asked for that, for the whole campaign.
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if not self.busy:
            raise SystemExit(128 + signum)

    def after_case(self) -> None:
        self.busy = False
        if self.signum:
            raise SystemExit(128 + self.signum)


def load_backend(name: str) -> Backend:
    """Import and construct a backend by name ("interp", "bcc", or "package.module:Class"
    for one outside this table); KernelUnsupported when it cannot work here."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
    elif name in BACKENDS:
        module_name, class_name = BACKENDS[name]
    else:
        raise KernelUnsupported(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)} or module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise KernelUnsupported(f"backend {name!r} cannot be imported: {e}") from None
    if not hasattr(module, class_name):
        raise KernelUnsupported(f"backend {name!r}: {module_name} has no {class_name}")
    backend: Backend = getattr(module, class_name)()
    return backend


def error_outcome(message: str, notes: Mapping[str, Any]) -> Outcome:
    return Outcome(side="kernel", notes={**notes, "error": message})


def _case(framed: bool, data: bytes) -> Case:
    """The case in a message; CaseError for one the contract refuses or a frame that is not one."""
    if not framed:
        return loads_case(data.decode("utf-8", "replace"))
    try:
        return unframe(data, Case)
    except ValueError as e:
        raise CaseError("", str(e)) from None


def serve(executor: Executor, inp: IO[bytes], out: IO[bytes], stop: _Stop | None = None) -> None:
    """The case loop: one case in, its outcome out, until EOF; a frame is answered with a frame,
    a JSON line with a JSON line.  Kernel log lines printed while a case ran go into its notes
    as `kernel_log` (kernel_runner/kmsg.py).  With `stop`, a stop signal ends the loop between
    cases (SystemExit)."""
    base_notes = {"kernel": os.uname().release, "backend": executor.backend.name}
    kmsg = KmsgWatch()
    while (message := read_message(inp)) is not None:
        framed, data = message
        if not framed and not data.strip():
            continue
        if stop is not None:
            stop.busy = True
        start = time.perf_counter_ns()
        try:
            outcome = executor.run(_case(framed, data))
            notes: dict[str, Any] = {**base_notes, "elapsed_us": (time.perf_counter_ns() - start) // 1000}
            log = kmsg.read()
            if log:
                notes["kernel_log"] = log
            outcome = Outcome(
                side=outcome.side, inserts=outcome.inserts, events=outcome.events, runs=outcome.runs,
                run_count=outcome.run_count, endpoints=outcome.endpoints, hang=outcome.hang, notes=notes,
            )
        except CaseError as e:
            outcome = error_outcome(f"bad case: {e}", base_notes)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            outcome = error_outcome(f"{type(e).__name__}: {e}", base_notes)
        out.write(frame(outcome) if framed else outcome.to_json(indent=None).encode() + b"\n")
        out.flush()
        if stop is not None:
            stop.after_case()
    kmsg.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernel_runner.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="interp", help=f"{', '.join(BACKENDS)} or module:Class")
    parser.add_argument("--no-netns", action="store_true",
                        help="stay in the current network namespace (inside a throw-away VM)")
    parser.add_argument("--python-threads", action="store_true",
                        help="issue fresh-thread sends from Python threads, not raw pthreads (executor.py)")
    parser.add_argument("--cpu", type=int, default=None,
                        help="pin the worker (and so every send thread it creates) to this CPU")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the worker (and its send threads) at this niceness at least")
    args = parser.parse_args(argv)

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    # Before any thread exists: the blocked SIGPIPE mask and the namespace are both inherited
    # by every thread created later (executor.py, netns.py).
    block_sigpipe()
    # Ctrl-C in the engine reaches the whole process group, and any stop signal may reach a worker
    # alone: either way the worker finishes its case first (STOP_SIGNALS), so it never dies half-way
    # through one of its own accord.
    stop = _Stop()
    try:
        nice_at_least(args.nice)
        if args.cpu is not None:
            # A fresh send thread then starts on the CPU of the thread that waits for it: on this
            # (virtualised) host a cross-CPU wake-up costs 3-5 ms at the 99th percentile instead
            # of 0.1 ms (bench/kernel_throughput.py).
            os.sched_setaffinity(0, {args.cpu})
        pidns = probe_pid_namespace()
        if pidns:
            raise KernelUnsupported(pidns)
        if not args.no_netns:
            enter_new_netns()
        backend = load_backend(args.backend)
    except KernelUnsupported as e:
        out.write(json.dumps({"fatal": str(e)}).encode() + b"\n")
        out.flush()
        return EXIT_FATAL
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        out.write(json.dumps({"fatal": f"backend {args.backend!r} failed to start: {type(e).__name__}: {e}"}).encode()
                  + b"\n")
        out.flush()
        return EXIT_FATAL
    try:
        ready = {"pid": os.getpid(), "kernel": os.uname().release, "backend": backend.name}
        out.write(json.dumps({"ready": ready}).encode() + b"\n")
        out.flush()
        serve(Executor(backend, raw_threads=not args.python_threads), sys.stdin.buffer, out, stop)
    except BrokenPipeError:
        pass  # the pool went away; nothing left to answer
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
