"""The triage process on the real kernel: killed outright, what it held is kept under
unconfirmed/ and the campaign stops cleanly; `diffuzz triage WORKDIR` then finishes it.
(Stop signals to it, or to its kernel worker, are in test_fuzz_faults.py's signal matrix.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sim
from diffuzz.engine.confirm import Independent
from diffuzz.engine.triage_process import TRIAGE_NICE, TriageProcess
from diffuzz.engine.zone import DEFAULT
from kernel_runner.pool import KernelPool
from kernel_runner.worker_process import WORKER_NICE
from tests.faults.test_fuzz_faults import (
    PLANTED,
    ROOT,
    _events,
    _fuzz,
    _need_kernel,
    kernel,
    triage_process,
    wait_for_finding,
)


@kernel
def test_triage_process_killed_its_cases_wait_in_unconfirmed_for_diffuzz_triage(tmp_path: Path) -> None:
    _need_kernel()
    proc = _fuzz(tmp_path, "--duration", "120", planted=True)
    wait_for_finding(tmp_path, proc)
    child = triage_process(proc.pid)
    os.kill(child, signal.SIGSTOP)  # it holds the case it has; the loop queues more meanwhile
    time.sleep(2.0)
    os.kill(child, signal.SIGKILL)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "diffuzz fuzz: summary" in out
    assert "the triage process was killed by SIGKILL: stopping the campaign" in out
    kept = sorted((tmp_path / "unconfirmed").glob("*.json"))
    assert kept, out
    assert any(e["kind"] == "unconfirmed" for e in _events(tmp_path))
    assert "not triaged (unconfirmed/)" in out  # the summary says so
    findings_before = {p.name for p in (tmp_path / "findings").iterdir()}

    # Later, on the same work directory: every kept case is run again, triaged and saved.
    p = subprocess.run([sys.executable, "-c", PLANTED, "triage", str(tmp_path), "--minimize-seconds", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DIFFUZZ_TEST_PLANT": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{len(kept)} case(s)" in p.stdout
    assert not list((tmp_path / "unconfirmed").glob("*.json")), p.stdout
    said = [line for line in p.stdout.splitlines() if line.startswith("  seed")]
    assert len(said) == len(kept) and all("a finding" in line or "flaky" in line or "agree" in line
                                          for line in said), p.stdout
    if any("a finding" in line for line in said):
        counted = [e for e in _events(tmp_path) if e["kind"] in ("new_finding", "finding")]
        assert counted[-1]["counters"]["sessions"] == 2
        assert {p.name for p in (tmp_path / "findings").iterdir()} >= findings_before
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())  # nothing half-written

    again = subprocess.run([sys.executable, "-c", PLANTED, "triage", str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to triage" in again.stdout, again.stdout + again.stderr


def test_diffuzz_triage_on_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "diffuzz.cli.commands", "triage", str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no such work directory" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@kernel
def test_triage_and_its_kernel_worker_run_below_the_loops_workers() -> None:
    # TRIAGE_NICE: triage takes what the loop and its workers (WORKER_NICE) leave.
    _need_kernel()
    triage = TriageProcess(lambda: KernelPool(jobs=1), sim.run, Independent(None), DEFAULT, minimize_seconds=1)
    try:
        assert triage.pid is not None
        children = Path(f"/proc/{triage.pid}/task/{triage.pid}/children")
        deadline = time.monotonic() + 60
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)  # its kernel worker starting
        (worker,) = map(int, children.read_text().split())
        assert TRIAGE_NICE > WORKER_NICE
        assert os.getpriority(os.PRIO_PROCESS, triage.pid) == TRIAGE_NICE
        assert os.getpriority(os.PRIO_PROCESS, worker) == TRIAGE_NICE
    finally:
        triage.close()
