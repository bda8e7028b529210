"""Faults `diffuzz fuzz` survives, with real processes (and the real kernel where it applies):

- a kernel worker killed (SIGKILL, by its pid) mid-run: the case is re-run, the campaign goes on;
- a kernel worker that stops answering (SIGSTOP): a hang finding, the campaign goes on;
- a set-up insert the kernel refuses (EBUSY: the socket is in the map already) is an outcome;
- ENOSPC while saving a finding (a small tmpfs in a private mount namespace of a subprocess):
  reported, kept in memory and written once there is room;
- SIGTERM: a clean stop, state saved, exit 0 with the summary;
- kill -9 of the whole job (fuzzer and workers) then a restart: counts go on, every file left
  behind is whole, and no finding logged before the kill is missing.

ENOMEM during set-up cannot be forced from here without changing the host (memcg limits on the
workers, or fault injection in the kernel), so it is not tested; the pool turns any set-up
errno into `Outcome.inserts` the same way as EBUSY.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from diffuzz.engine.campaign_state import EVENTS, STATE, STATS, state_from_bytes

ROOT = Path(__file__).parents[2]
kernel = pytest.mark.kernel

# `diffuzz fuzz` as the CLI runs it, with batches of 32 (not 1024: a finding is handled within
# a second or two) and no bcc confirmation (it compiles C per finding: slow, and not what is
# tested).  DIFFUZZ_TEST_PLANT=1 plants a model bug: one case in 8, picked by a hash of its JSON
# so the confirmation re-run agrees, counts one program run too many; findings then come quickly
# while the kernel side is the real one.
PLANTED = textwrap.dedent("""
    import dataclasses, os, sys, zlib
    import sim
    PLANT = os.environ.get("DIFFUZZ_TEST_PLANT") == "1"
    import diffuzz.cli.fuzz as cli_fuzz
    import diffuzz.engine.loop as engine
    real = sim.run

    def planted(case, *profile):
        out = real(case, *profile)
        if PLANT and zlib.crc32(case.to_json().encode()) % 8 == 0:
            out = dataclasses.replace(out, run_count=out.run_count + 1)
        return out

    sim.run = planted
    config = engine.FuzzConfig
    engine.FuzzConfig = lambda **kw: config(batch=32, **kw)
    cli_fuzz._independent_factory = lambda deadline: None
    from diffuzz.cli.commands import main
    sys.argv = ["diffuzz", *sys.argv[1:]]
    main()
""")


def _need_kernel() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF and network namespaces)")


def _fuzz(workdir: Path, *args: str, planted: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "DIFFUZZ_TEST_PLANT": "1" if planted else "0"}
    return subprocess.Popen([sys.executable, "-c", PLANTED, "fuzz", "--workdir", str(workdir), "--jobs", "2",
                             "--seed", "11", "--minimize-seconds", "0.3", "--stats-interval", "0.2", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)


def _events(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / EVENTS).read_text().splitlines()]


def _stats(workdir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((workdir / STATS).read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _wait(what: str, cond: Callable[[], bool], proc: subprocess.Popen[str], limit: float = 30.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"diffuzz exited ({proc.returncode}) while waiting for {what}:\n{proc.communicate()[0]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"gave up waiting for {what}:\n{proc.communicate()[0]}")
        time.sleep(0.1)


def wait_for_finding(workdir: Path, proc: subprocess.Popen[str]) -> None:
    """Until the planted bug's first finding is saved (a documented kernel bug's does not count:
    it is never triaged, so the triage process may still be starting)."""
    _wait("a finding", lambda: (workdir / EVENTS).exists() and any(
        e["kind"] == "new_finding" and not e["bucket"].startswith("known.") for e in _events(workdir)), proc)


def _workers(pid: int) -> list[int]:
    """The fuzzer's kernel workers: its child processes running kernel_runner.worker."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            try:
                if b"kernel_runner.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(int(child))
            except OSError:  # a process that just ended (a replaced worker, a short-lived helper)
                continue
    return out


def _term(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


@kernel
def test_worker_killed_mid_run_the_case_is_rerun(tmp_path: Path) -> None:
    _need_kernel()
    proc = _fuzz(tmp_path, "--duration", "60")
    _wait("the first stats", lambda: _stats(tmp_path).get("execs_done", 0) > 0, proc)
    victim = _workers(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    before = _stats(tmp_path)["execs_done"]
    _wait("cases after the kill", lambda: _stats(tmp_path).get("execs_done", 0) > before + 50, proc)
    out = _term(proc)
    events = _events(tmp_path)
    lost = [e for e in events if e["kind"] in ("worker_lost", "kernel_error")]
    assert any(f"worker {victim} " in e["error"] for e in lost), (lost, out)
    assert "diffuzz fuzz: summary" in out


@kernel
def test_worker_that_stops_answering_is_a_hang_finding(tmp_path: Path) -> None:
    _need_kernel()
    proc = _fuzz(tmp_path, "--duration", "60", "--deadline", "2")
    _wait("the first stats", lambda: _stats(tmp_path).get("execs_done", 0) > 0, proc)
    stopped = _workers(proc.pid)[0]
    os.kill(stopped, signal.SIGSTOP)  # the pool kills it (SIGKILL) at the deadline
    _wait("a hang event", lambda: any(e["kind"] == "hang" for e in _events(tmp_path)), proc)
    at_hang = _stats(tmp_path).get("execs_done", 0)
    _wait("cases after the hang", lambda: _stats(tmp_path).get("execs_done", 0) > at_hang + 50, proc)
    out = _term(proc)
    hangs = [e for e in _events(tmp_path) if e["kind"] == "hang"]
    # On a busy machine another case may pass the 2 s deadline too; the stopped worker's is there.
    [ours] = [e for e in hangs if f"worker {stopped} " in e["why"]]
    assert Path(ours["saved"]).exists() and "killed" in ours["why"]
    assert json.loads((tmp_path / STATS).read_text())["hangs"] == len(hangs)
    assert "hangs" in out


@kernel
def test_setup_insert_refused_with_ebusy_is_an_outcome(tmp_path: Path) -> None:
    _need_kernel()
    import sim
    from diffuzz.contract.case import Case, MapEntry, Send
    from diffuzz.engine.campaign import Campaign
    from diffuzz.engine.corpus import Corpus
    from diffuzz.engine.loop import Engine, FuzzConfig
    from kernel_runner.pool import KernelPool

    busy = Case(pairs=1, inserts=(MapEntry(0, "c0"), MapEntry(1, "c0")), events=(Send("c0", 10),))
    with KernelPool(jobs=1) as pool:
        assert pool.run(busy).inserts == (0, "EBUSY")
        camp = Campaign.open(tmp_path, ["test"], os.uname().release, "random")
        st = Engine(FuzzConfig(cases=20, batch=10), pool, sim.run, Corpus(tmp_path), campaign=camp,
                    source=lambda i: busy).run()
        camp.close("test")
    assert st.cases == 20 and st.kernel_errors == 0 and st.mismatches == 0 and st.retried == 0
    assert _stats(tmp_path)["execs_done"] == 20


# Runs as root in a private mount namespace (unshare -m): a 1 MiB tmpfs is the work directory,
# a filler file takes all its room, a finding is made, then the filler goes and the engine's
# next save attempt must write it.
ENOSPC = textwrap.dedent("""
    import dataclasses, json, os, subprocess, sys
    from pathlib import Path
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", sys.argv[1]], check=True)
    import sim
    from diffuzz.engine.campaign import Campaign
    from diffuzz.engine.corpus import Corpus
    from diffuzz.engine.function_pool import FunctionPool
    from diffuzz.engine.loop import Engine, FuzzConfig
    work = Path(sys.argv[1])
    kernel = FunctionPool(lambda c: dataclasses.replace(sim.run(c), run_count=sim.run(c).run_count + 1))
    camp = Campaign.open(work, ["test"], "r", "random", flush_interval=0)
    engine = Engine(FuzzConfig(seed=1, cases=1, batch=1, minimize_seconds=2), kernel, sim.run, Corpus(work),
                    campaign=camp)
    filler = work / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    os.close(fd)
    st = engine.run()
    full = {"unsaved": st.unsaved, "findings": st.findings, "on_disk": sorted(os.listdir(work))}
    filler.unlink()
    engine.finish()
    camp.close("test")
    buckets = sorted(p.name for p in (work / "findings").iterdir())
    kinds = [json.loads(line)["kind"] for line in (work / "events.jsonl").read_text().splitlines()]
    print(json.dumps({"full": full, "unsaved": st.unsaved, "buckets": buckets, "new": st.new_buckets,
                      "kinds": kinds}))
""")


def test_disk_full_while_saving_a_finding(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(["unshare", "--mount", sys.executable, "-c", ENOSPC, str(mnt)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "mount" in p.stderr and "permission denied" in p.stderr.lower():
        pytest.skip(f"mounting a tmpfs is not allowed here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.splitlines()[-1])
    assert r["full"]["findings"] == 1 and r["full"]["unsaved"] == 1, r  # refused, kept
    assert "cannot save finding" in p.stderr and "No space left on device" in p.stderr
    assert "saved after all" in p.stderr
    assert r["unsaved"] == 0 and r["buckets"] == r["new"] and len(r["new"]) == 1
    assert "problem" in r["kinds"] and r["kinds"].index("problem") < r["kinds"].index("new_finding")
    assert not list(mnt.iterdir()), "the tmpfs leaked out of the private mount namespace"


@kernel
def test_sigterm_stops_cleanly_with_state_saved(tmp_path: Path) -> None:
    _need_kernel()
    proc = _fuzz(tmp_path, "--duration", "60")
    _wait("the first stats", lambda: _stats(tmp_path).get("execs_done", 0) > 0, proc)
    out = _term(proc)
    assert "diffuzz fuzz: summary" in out and "Traceback" not in out
    last = _events(tmp_path)[-1]
    assert last["kind"] == "stop" and last["reason"] == "interrupted"
    state = state_from_bytes((tmp_path / STATE).read_bytes())
    assert state.execs == last["counters"]["execs"] == _stats(tmp_path)["execs_done"] > 0
    again = _fuzz(tmp_path, "--cases", "5")
    out2, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out2  # the directory was released


@kernel
def test_kill9_of_the_whole_job_then_restart(tmp_path: Path) -> None:
    _need_kernel()
    proc = _fuzz(tmp_path, "--duration", "60", planted=True)

    def found() -> bool:
        return (tmp_path / EVENTS).exists() and any(e["kind"] == "new_finding" for e in _events(tmp_path))

    _wait("a finding", found, proc)
    _wait("more cases", lambda: _stats(tmp_path).get("execs_done", 0) > 60, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the fuzzer and its workers, at once
    proc.communicate()
    logged = {e["bucket"] for e in _events(tmp_path) if e["kind"] == "new_finding"}
    assert logged
    saved = state_from_bytes((tmp_path / STATE).read_bytes())  # whole, checksum good

    again = _fuzz(tmp_path, "--cases", "10", planted=True)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    after = state_from_bytes((tmp_path / STATE).read_bytes())
    assert after.sessions == saved.sessions + 1
    assert after.execs >= saved.execs + 10 and after.seed_cursor > saved.seed_cursor
    profile = _stats(tmp_path)["kernel_profile"]  # probed at start, recorded in stats and the log
    assert profile["name"] and profile["probes"]
    assert [e["name"] for e in _events(tmp_path) if e["kind"] == "kernel_profile"] == [profile["name"]] * 2
    for bucket in logged:  # every finding logged before the kill is on disk, whole
        d = tmp_path / "findings" / bucket
        assert json.loads((d / "bucket.json").read_text())["profiles"] == [profile["name"]]
        assert f"kernel profile: {profile['name']}" in (d / "finding.md").read_text()
        json.loads((d / "case.json").read_text())
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())  # no half-written file anywhere
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert any(e["kind"] == "resume" for e in _events(tmp_path))


@kernel
def test_atheris_engine_stops_on_sigterm_and_resumes(tmp_path: Path) -> None:
    _need_kernel()
    pytest.importorskip("atheris")
    proc = _fuzz(tmp_path, "--engine", "atheris", "--duration", "60")
    _wait("cases", lambda: _stats(tmp_path).get("execs_done", 0) > 20, proc)
    out = _term(proc)
    assert "diffuzz fuzz: summary" in out and "Traceback" not in out
    last = _events(tmp_path)[-1]
    assert last["kind"] == "stop" and last["reason"] == "interrupted"
    stats = _stats(tmp_path)
    assert stats["engine"] == "atheris" and stats["feature_coverage"] > 0
    assert list((tmp_path / "atheris-corpus").iterdir())  # libFuzzer kept inputs that found features
    again = _fuzz(tmp_path, "--engine", "atheris", "--cases", "5")
    out2, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out2
    after = state_from_bytes((tmp_path / STATE).read_bytes())
    assert after.sessions == 2 and after.execs >= stats["execs_done"] + 5


@kernel
def test_sigterm_to_the_whole_process_group_stops_cleanly(tmp_path: Path) -> None:
    # What `timeout`, systemd's default stop and `docker stop` do: every process of the campaign,
    # the fuzzer and its workers, gets SIGTERM at once.  The workers die idle or mid-case; the
    # fuzzer must not trip over a worker that had nothing in flight (pool._replace).
    _need_kernel()
    proc = _fuzz(tmp_path, "--duration", "60", planted=True)
    wait_for_finding(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "diffuzz fuzz: summary" in out
    assert _events(tmp_path)[-1]["kind"] == "stop"
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())  # nothing half-written


def triage_process(pid: int) -> int:
    """The fuzzer's triage process: its child that is not a kernel worker (a fork of it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                if b"kernel_runner.worker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
    raise AssertionError(f"no triage process under {pid}")


def _send(proc: subprocess.Popen[str], target: str, sig: signal.Signals) -> str:
    """Send sig to the whole process group, the fuzzer alone, one kernel worker alone, the
    triage process alone, or the triage process's kernel worker alone."""
    if target == "group":
        os.killpg(proc.pid, sig)
        return "group"
    if target == "main":
        os.kill(proc.pid, sig)
        return "main"
    if target == "triage":
        pid = triage_process(proc.pid)
        os.kill(pid, sig)
        return f"triage process {pid}"
    workers = _workers(triage_process(proc.pid) if target == "triage-worker" else proc.pid)
    assert workers, "no kernel worker found"
    os.kill(workers[0], sig)
    return f"{target} {workers[0]}"


@kernel
@pytest.mark.parametrize("target", ["group", "main", "worker", "triage", "triage-worker"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_any_stop_signal_to_any_process_ends_the_campaign_cleanly(tmp_path: Path, target: str,
                                                                  sig: signal.Signals) -> None:
    # Issue 13: whichever process of a campaign gets the signal, while findings are being
    # confirmed, minimized and saved (a planted model bug makes one case in 8 a finding), the
    # campaign stops: the summary, exit 0, no file half-written, and it resumes.
    _need_kernel()
    proc = _fuzz(tmp_path, "--duration", "120", planted=True)
    wait_for_finding(tmp_path, proc)
    who = _send(proc, target, sig)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, f"{sig.name} to {who}:\n{out}"
    assert "Traceback" not in out and "diffuzz fuzz: summary" in out
    assert _events(tmp_path)[-1]["kind"] == "stop"
    if target != "group" and target != "main":
        assert "stopping the campaign" in out
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())  # nothing half-written
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    again = _fuzz(tmp_path, "--cases", "5")
    out2, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out2  # resumable


@kernel
def test_a_signal_ignored_at_start_stays_ignored_like_nohup(tmp_path: Path) -> None:
    # `nohup diffuzz fuzz ...` starts the campaign with SIGHUP ignored: a hang-up of the terminal must
    # not stop it, in the fuzzer or in its workers (they inherit the disposition).
    _need_kernel()
    env = {**os.environ, "DIFFUZZ_TEST_PLANT": "0"}
    proc = subprocess.Popen([sys.executable, "-c", PLANTED, "fuzz", "--workdir", str(tmp_path), "--jobs", "2",
                             "--seed", "11", "--stats-interval", "0.2", "--duration", "60"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _wait("the first stats", lambda: _stats(tmp_path).get("execs_done", 0) > 0, proc)
    os.killpg(proc.pid, signal.SIGHUP)
    before = _stats(tmp_path).get("execs_done", 0)
    _wait("more cases after the hang-up", lambda: _stats(tmp_path).get("execs_done", 0) > before + 50, proc)
    out = _term(proc)
    assert "stopping the campaign" not in out and "diffuzz fuzz: summary" in out
