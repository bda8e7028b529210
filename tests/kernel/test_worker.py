"""The worker process and its pool: the pipe protocol, hangs, dead workers, start-up failures, order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from diffuzz.contract.case import Case, Invocation, MapEntry, Send, SockOpt
from diffuzz.contract.outcome import Data, EventResult, Outcome, loads_outcome
from diffuzz.contract.wire import MAGIC, frame, frames, unframe
from kernel_runner.backend import KernelUnsupported
from kernel_runner.netns import NOT_ROOT
from kernel_runner.pidns import FOREIGN_PID_NS
from kernel_runner.pool import KernelPool, is_error
from kernel_runner.worker_process import WORKER_NICE

ROOT = Path(__file__).resolve().parents[2]
ABC = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

kernel = pytest.mark.kernel(needs=("interp",))


def pass_case(n: int) -> Case:
    return Case(inserts=(MapEntry(0, "c0"),), program=(Invocation(),), events=(Send("c0", n),))


def blocking_case() -> Case:
    """A send that never returns: 1 MB, blocking, into a 2 KB receive buffer that nobody reads
    (plain TCP, no map): tcp_sendmsg waits for send-buffer space forever."""
    return Case(sockopts=(SockOpt("c0", sndbuf=4096), SockOpt("p0", rcvbuf=2048)), events=(Send("c0", 1 << 20),))


def start_worker(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*prefix, sys.executable, "-m", "kernel_runner.worker", *args], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@kernel
def test_worker_protocol_one_line_each_way() -> None:
    proc = start_worker("--backend", "interp")
    assert proc.stdin is not None and proc.stdout is not None
    hello = json.loads(proc.stdout.readline())
    assert hello["ready"]["pid"] == proc.pid and hello["ready"]["kernel"] == os.uname().release
    assert hello["ready"]["backend"] == "interp"
    # A good case, a blank line (ignored), a line that is not JSON, a case the format rejects, a good case.
    proc.stdin.write(pass_case(5).to_json(indent=None).encode() + b"\n\n{nope\n"
                     + b'{"format": 1, "pairs": 99}\n' + pass_case(3).to_json(indent=None).encode() + b"\n")
    proc.stdin.close()
    lines = proc.stdout.read().splitlines()
    assert proc.wait(timeout=10) == 0
    assert len(lines) == 4
    first, bad_json, bad_case, last = (loads_outcome(line.decode()) for line in lines)
    assert first.events == (EventResult(ret=5),) and first.endpoints["p0"].rx == Data(ABC[:5])
    assert first.notes["kernel"] == os.uname().release and first.notes["backend"] == "interp"
    assert isinstance(first.notes["elapsed_us"], int) and first.notes["elapsed_us"] > 0
    assert "not valid JSON" in bad_json.notes["error"] and bad_json.events == ()
    assert "pairs" in bad_case.notes["error"]
    assert last.events == (EventResult(ret=3),)


@kernel
def test_worker_protocol_frames_for_frames_lines_for_lines() -> None:
    # A JSON line (answered with a line), then what the pool sends (diffuzz/contract/wire.py): a
    # frame, a frame that decodes to nothing, an outcome where a case belongs, a frame again.
    proc = start_worker("--backend", "interp")
    assert proc.stdin is not None and proc.stdout is not None
    json.loads(proc.stdout.readline())
    garbage = b"not marshal"
    proc.stdin.write(pass_case(2).to_json(indent=None).encode() + b"\n" + frame(pass_case(5))
                     + MAGIC + len(garbage).to_bytes(4, "little") + garbage + frame(Outcome(side="kernel"))
                     + frame(pass_case(3)))
    proc.stdin.close()
    line, _, rest = proc.stdout.read().partition(b"\n")
    assert proc.wait(timeout=10) == 0
    assert loads_outcome(line.decode()).events == (EventResult(ret=2),)
    buf = bytearray(rest)
    first, bad_frame, not_a_case, last = (unframe(p, Outcome) for p in frames(buf))
    assert not buf  # nothing but whole frames
    assert first.events == (EventResult(ret=5),) and first.endpoints["p0"].rx == Data(ABC[:5])
    assert isinstance(first.notes["elapsed_us"], int) and first.notes["backend"] == "interp"
    assert "bad case: not a diffuzz frame" in bad_frame.notes["error"] and bad_frame.events == ()
    assert "Outcome where a Case was expected" in not_a_case.notes["error"]
    assert last.events == (EventResult(ret=3),)


@kernel
def test_worker_runs_in_its_own_network_namespace() -> None:
    proc = start_worker("--backend", "interp")
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())
    try:
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        proc.kill()
        proc.wait()


@kernel
def test_pool_workers_and_their_send_threads_run_below_the_loop() -> None:
    # WORKER_NICE: the process that feeds the workers keeps its CPU when it wakes one.
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with KernelPool(jobs=1) as pool:
        (pid,) = pool.pids()
        assert os.getpriority(os.PRIO_PROCESS, pid) == max(own, WORKER_NICE)
        out = pool.run(pass_case(4))
        assert out.events == (EventResult(ret=4),)


def fatal_line_under(tool: str, *args: str) -> dict[str, str]:
    """Start an interp worker under `tool args --` (util-linux) and return its one fatal line."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} (util-linux) is not installed")
    proc = start_worker("--backend", "interp", prefix=(path, *args, "--"))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err.decode()
    return json.loads(out.splitlines()[0])


@kernel
def test_worker_without_privileges_says_so() -> None:
    # Root whose capabilities are gone (an unprivileged container): setpriv empties the bounding
    # set, so the exec'd worker has no CAP_SYS_ADMIN / CAP_BPF / CAP_NET_ADMIN.  It stays uid 0,
    # so it can still read a checkout in a private directory.
    assert fatal_line_under("setpriv", "--bounding-set=-all", "--inh-caps=-all") == {"fatal": NOT_ROOT}


@kernel
def test_worker_in_a_private_pid_namespace_says_so() -> None:
    # A container without --pid=host: the programs' thread ids (initial namespace) would never
    # match the worker's gettid(), so the worker refuses with the fix instead of running.
    assert fatal_line_under("unshare", "--pid", "--fork") == {"fatal": FOREIGN_PID_NS}


@kernel
def test_pool_start_failure_is_kernel_unsupported() -> None:
    with pytest.raises(KernelUnsupported, match="unknown backend 'nosuch'"):
        KernelPool(jobs=1, backend="nosuch")


@kernel
def test_hang_is_reported_and_the_next_case_runs() -> None:
    with KernelPool(jobs=1, backend="interp", deadline=1.0) as pool:
        before = pool.pids()
        hung, after = pool.imap([blocking_case(), pass_case(4)])
        assert hung.hang is True and hung.side == "kernel"
        assert f"worker {before[0]} was killed" in hung.notes["hang"]
        assert not is_error(hung) and hung.events == ()
        assert after.hang is False and after.events == (EventResult(ret=4),)
        assert pool.pids() != before
        assert not os.path.exists(f"/proc/{before[0]}")


def _answer_pipe(pool: KernelPool, pid: int) -> BinaryIO:
    """The worker's answer pipe, opened for writing through /proc: what is written here reaches
    the pool as if the worker had said it."""
    pipe = os.fstat(pool._workers[0].rfd).st_ino
    ends = [fd for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}") == f"pipe:[{pipe}]"]
    return open(f"/proc/{pid}/fd/{ends[0]}", "wb")


@kernel
def test_a_worker_out_of_step_is_replaced_and_its_case_is_an_error() -> None:
    # Bytes that are not a frame on a worker's answer pipe (written here through /proc, into the
    # very pipe its answers take): nothing after them can be matched to a case.
    with KernelPool(jobs=1, backend="interp") as pool:
        (pid,) = pool.pids()
        with _answer_pipe(pool, pid) as answers:
            answers.write(b"{not a frame}\n")
        bad, after = pool.imap([pass_case(3), pass_case(2)])
        assert is_error(bad) and "answered something that is not an outcome" in bad.notes["error"]
        assert after.events == (EventResult(ret=2),) and pool.pids() != [pid]


@kernel
def test_the_whole_frames_before_what_is_out_of_step_still_answer() -> None:
    # An answer, then bytes that are not a frame, read in one go: the answer is its case's; the
    # case the worker was on when it went out of step fails, and the rest run on a fresh worker.
    with KernelPool(jobs=1, backend="interp") as pool:
        (pid,) = pool.pids()
        with _answer_pipe(pool, pid) as answers:
            answers.write(frame(Outcome(side="kernel", events=(EventResult(ret=99),))) + b"{not a frame}\n")
        first, current, after = pool.imap([pass_case(3), pass_case(2), pass_case(4)])
        assert not is_error(first) and first.events == (EventResult(ret=99),)
        assert is_error(current) and "answered something that is not an outcome" in current.notes["error"]
        assert after.events == (EventResult(ret=4),) and pool.pids() != [pid]


@kernel
def test_dead_worker_is_replaced_and_its_case_is_an_error() -> None:
    with KernelPool(jobs=1, backend="interp", deadline=30.0) as pool:
        (pid,) = pool.pids()
        # The blocking case keeps the worker busy; kill it from outside while it runs.
        killer = threading.Timer(0.5, os.kill, (pid, 9))
        killer.start()
        started = time.monotonic()
        dead, after = pool.imap([blocking_case(), pass_case(2)])
        killer.join()
        assert time.monotonic() - started < 30
        assert is_error(dead) and not dead.hang
        assert dead.notes["error"] == f"worker {pid} died (killed by SIGKILL) while running this case; it was replaced"
        assert after.events == (EventResult(ret=2),)
        assert pool.pids() != [pid]


@kernel
def test_imap_keeps_input_order_on_every_worker() -> None:
    sizes = [(i * 37) % 500 + 1 for i in range(60)]
    with KernelPool(jobs=2, backend="interp") as pool:
        outs = list(pool.imap(pass_case(n) for n in sizes))
        assert [o.events[0].ret for o in outs] == sizes
        assert [len(o.endpoints["p0"].rx) for o in outs] == sizes
        # An abandoned iteration leaves nothing behind for the next one.
        it = pool.imap(pass_case(n) for n in range(1, 20))
        assert next(it).events[0].ret == 1
        it.close()
        assert pool.run(pass_case(77)).events[0].ret == 77
        # Iterations nest: a run inside an open imap gets its own answer, and the outer one
        # then reads on with every case of its own, in order (its queue was not dropped).
        it = pool.imap(pass_case(n) for n in range(1, 41))
        assert next(it).events[0].ret == 1
        assert pool.run(pass_case(99)).events[0].ret == 99
        inner = pool.imap(pass_case(n) for n in (101, 102, 103))
        assert next(inner).events[0].ret == 101
        inner.close()  # abandoned mid-way inside the outer iteration
        assert [o.events[0].ret for o in it] == list(range(2, 41))
        assert pool.run(pass_case(8)).events[0].ret == 8


@kernel
def test_local_run_uses_one_cached_worker() -> None:
    from kernel_runner import local

    out = local.run(pass_case(6))
    assert out.events == (EventResult(ret=6),)
    assert local.run(pass_case(8)).events == (EventResult(ret=8),)
    local.close()


@kernel
def test_a_slow_consumer_is_not_a_hang() -> None:
    # While the caller does not iterate, answers wait in the pipe; the deadline must not fire on them.
    with KernelPool(jobs=1, backend="interp", deadline=0.5) as pool:
        outs = []
        for out in pool.imap(pass_case(n) for n in (1, 2, 3, 4)):
            outs.append(out)
            time.sleep(0.7)
        assert [o.hang for o in outs] == [False] * 4
        assert [o.events[0].ret for o in outs] == [1, 2, 3, 4]


@kernel
def test_raw_and_python_send_threads_agree() -> None:
    # send_thread.py issues fresh-thread sends from a raw pthread (x86-64) or a Python thread;
    # the kernel must not be able to tell: same returns, SIGPIPE, windows, tasks, bytes.
    from diffuzz.contract.case import BPF_F_INGRESS, Redirect, SendFile, SendMsg, Shutdown, Splice

    inserts = tuple(MapEntry(k, ep) for k, ep in enumerate(("c0", "p0", "c1", "p1")))
    cases = [
        Case(pairs=2, inserts=inserts, program=(Invocation(),),
             events=(Send("c0", 10000), Send("c0", 10000), SendMsg("c0", (3, 5000, 7)), SendFile("c0", 20000),
                     Splice("c0", 30000), Send("c0", 10000, ("MSG_MORE",)))),
        Case(pairs=2, inserts=inserts, program=(Invocation((Redirect(1, BPF_F_INGRESS),)), Invocation()),
             events=(Shutdown("c0"), Send("c0", 5), Send("c0", 5), Send("c0", 5, ("MSG_NOSIGNAL",)))),
    ]
    answers = []
    for flags in ((), ("--python-threads",)):
        proc = start_worker("--backend", "interp", *flags)
        assert proc.stdin is not None and proc.stdout is not None
        json.loads(proc.stdout.readline())
        out, _ = proc.communicate(b"".join(c.to_json(indent=None).encode() + b"\n" for c in cases), timeout=60)
        answers.append([loads_outcome(line.decode()) for line in out.splitlines()])
    raw, python = answers
    for a, b in zip(raw, python, strict=True):
        assert "error" not in a.notes and "error" not in b.notes
        assert (a.events, a.runs, a.run_count, a.endpoints) == (b.events, b.runs, b.run_count, b.endpoints)
    assert [r.win_in for r in raw[0].runs][:2] == [10000, 10000]
    assert raw[1].events[2] == EventResult(ret="EPIPE", sigpipe=True)
    assert raw[1].events[3] == EventResult(ret="EPIPE")
