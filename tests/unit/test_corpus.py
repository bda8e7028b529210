"""The findings store: buckets by signature, counts on repeat, atomic files, no half-written
bucket when the writer is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from diffuzz.contract.case import Case, Invocation, MapEntry, PushData, Send, loads_case
from diffuzz.contract.outcome import EventResult, Outcome, loads_outcome
from diffuzz.engine.compare import Difference
from diffuzz.engine.corpus import Corpus, Finding, read_releases, read_status, write_atomic
from diffuzz.engine.signature import Signature, diff_kinds

ROOT = Path(__file__).resolve().parents[2]

CASE = Case(inserts=(MapEntry(0, "c0"),), program=(Invocation((PushData(0, 4),)),), events=(Send("c0", 10),))
KERNEL = Outcome(side="kernel", events=(EventResult(ret=14),), notes={"kernel": "6.18.44"})
MODEL = Outcome(side="model", events=(EventResult(ret=10),))
DIFFS = (Difference("events[0].ret", 14, 10),)


def _finding(case: Case = CASE, release: str = "6.18.44") -> Finding:
    return Finding(case, KERNEL, MODEL, DIFFS, Signature.of(diff_kinds(DIFFS), case, release), {"seed": 1})


def test_new_bucket_has_every_file(tmp_path):
    rec = Corpus(tmp_path).record(_finding())
    assert rec.new and rec.count == 1
    names = sorted(p.name for p in rec.bucket.iterdir())
    assert names == ["bucket.json", "case.json", "diff.txt", "finding.md", "kernel.json", "model.json"]
    assert loads_case((rec.bucket / "case.json").read_text()) == CASE
    assert loads_outcome((rec.bucket / "kernel.json").read_text()) == KERNEL
    assert "events[0].ret" in (rec.bucket / "diff.txt").read_text()
    assert read_status(rec.bucket) == "new"
    assert rec.bucket.name.startswith("events.ret-push_data-")
    assert rec.bucket.parent == tmp_path / "findings"


def test_same_signature_counts_instead_of_adding_files(tmp_path):
    corpus = Corpus(tmp_path)
    first = corpus.record(_finding())
    before = {p.name: p.read_bytes() for p in first.bucket.iterdir() if p.name not in ("bucket.json", "finding.md")}
    again = corpus.record(_finding(CASE.__class__(**{**CASE.__dict__, "events": (Send("c0", 99),)})))
    third = corpus.record(_finding(release="7.2.13"))
    assert again.bucket == first.bucket and not again.new and again.count == 2
    assert third.bucket != first.bucket  # another kernel release is another bucket
    after = {p.name: p.read_bytes() for p in first.bucket.iterdir() if p.name not in ("bucket.json", "finding.md")}
    assert after == before  # the saved case is the first one, untouched
    state = json.loads((first.bucket / "bucket.json").read_text())
    assert state["count"] == 2
    assert "count: 2" in (first.bucket / "finding.md").read_text()
    assert len(list(corpus.buckets())) == 2
    assert read_releases(first.bucket) == ["6.18.44"]


def test_status_follows_the_edited_finding_md(tmp_path):
    rec = Corpus(tmp_path).record(_finding())
    md = rec.bucket / "finding.md"
    md.write_text(md.read_text().replace("status: new", "status: kernel-bug"))
    assert read_status(rec.bucket) == "kernel-bug"
    Corpus(tmp_path).record(_finding())  # a hit keeps the person's edit
    assert read_status(rec.bucket) == "kernel-bug"


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.json"
    write_atomic(p, "one")
    write_atomic(p, b"two")
    assert p.read_text() == "two"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def _killed_writer(tmp_path: Path, body: str, ready: Callable[[], bool] | None = None) -> None:
    script = textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    # Let it get well into its writing loop (until `ready`, not a fixed time: a loaded machine
    # is slow), then kill it without warning.
    ready = ready or (lambda: (tmp_path / "started").exists())
    deadline = time.monotonic() + 60
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_writer_killed_mid_write_leaves_old_or_new_file(tmp_path):
    _killed_writer(tmp_path, """
        import sys, pathlib
        from diffuzz.engine.corpus import write_atomic
        d = pathlib.Path(sys.argv[1])
        (d / "started").touch()
        i = 0
        while True:
            write_atomic(d / "big", bytes([65 + i % 2]) * (8 << 20))
            i += 1
    """, ready=lambda: (tmp_path / "big").exists())  # killed after one whole write at least (a loaded CI is slow)
    data = (tmp_path / "big").read_bytes()
    assert data in (b"A" * (8 << 20), b"B" * (8 << 20))


def test_writer_killed_mid_bucket_leaves_no_half_bucket(tmp_path):
    _killed_writer(tmp_path, """
        import sys, pathlib
        from dataclasses import replace
        from diffuzz.contract.case import Case, Send
        from diffuzz.engine.compare import Difference
        from diffuzz.engine.corpus import Corpus, Finding
        from diffuzz.contract.outcome import Outcome
        from diffuzz.engine.signature import Signature
        d = pathlib.Path(sys.argv[1])
        corpus = Corpus(d / "c")
        (d / "started").touch()
        i = 0
        while True:  # a new bucket every time (release differs), each with a 2 MB case
            case = Case(events=tuple(Send("c0", 1) for _ in range(200)), meta={"pad": "x" * (2 << 20)})
            sig = Signature("events[*].ret", (), ("send",), f"r{i}")
            corpus.record(Finding(case, Outcome("kernel"), Outcome("model"),
                                  (Difference("events[0].ret", 1, 2),), sig))
            i += 1
    """, ready=lambda: len(list(Corpus(tmp_path / "c").buckets())) >= 1)
    corpus = Corpus(tmp_path / "c")
    complete = list(corpus.buckets())
    assert complete, "the writer made no bucket before it was killed"
    for b in (tmp_path / "c" / "findings").iterdir():
        if b.name.startswith("."):
            continue  # a temporary directory of the killed writer: never a bucket
        assert sorted(p.name for p in b.iterdir()) == [
            "bucket.json", "case.json", "diff.txt", "finding.md", "kernel.json", "model.json"]
        assert len(loads_case((b / "case.json").read_text()).events) == 200
    assert corpus.remove_stale_tmp(older_than_s=0) >= 0
    assert all(not p.name.startswith(".") for p in (tmp_path / "c" / "findings").iterdir())


def test_the_bucket_is_named_by_the_first_difference_in_time() -> None:
    from diffuzz.contract.outcome import Run, RunContext
    from diffuzz.engine.signature import root_kind

    run = Run("c0", 10, 10, (), 10, 1, RunContext(2, "c0", "p0", 1))
    kernel = Outcome(side="kernel", runs=(run,))
    # Field order puts events[3] first; in time, run 0 (inside send 1) came before send 3 returned.
    diffs = (Difference("events[3].ret", 5, 10), Difference("runs[0].verdict", 1, 0),
             Difference("endpoints.p0.rx", "a", "b"))
    assert root_kind(diffs, kernel) == "runs"
    assert root_kind((Difference("endpoints.p1.fionread", 1, 2), Difference("endpoints.p0.rx", "a", "b")),
                     kernel) == "endpoints"
    assert root_kind((Difference("events[2].sigpipe", True, False),), kernel) == "events"
    assert root_kind((Difference("runs[0].verdict", 1, 0), Difference("invariant.accounting", "x", None)),
                     kernel) == "invariant.accounting"
    # One cause, different observables downstream: one bucket.
    a = Signature.of(diff_kinds(diffs), CASE, "r", root_kind(diffs, kernel))
    b = Signature.of(diff_kinds(diffs[1:2]), CASE, "r", root_kind(diffs[1:2], kernel))
    assert a.bucket() == b.bucket() and a.kinds != b.kinds


def test_the_minimizer_may_move_a_cause_downstream_but_not_change_it() -> None:
    from diffuzz.engine.signature import same_cause

    assert same_cause("runs", "events") and same_cause("events", "endpoints") and same_cause("runs", "runs")
    assert not same_cause("endpoints", "events") and not same_cause("events", "runs")
    assert same_cause("invariant.accounting", "invariant.accounting")
    assert not same_cause("invariant.accounting", "endpoints") and not same_cause("runs", "invariant.accounting")


def test_a_helper_that_answered_differently_names_the_bucket_alone() -> None:
    from diffuzz.contract.case import PopData
    from diffuzz.contract.outcome import Run, RunContext
    from diffuzz.engine.signature import root_kind, same_cause

    run = Run("c0", 10, 10, (), 10, 1, RunContext(2, "c0", "p0", 1))
    kernel = Outcome(side="kernel", runs=(run, run))
    step = (Difference("runs[1].steps[0].rc", 0, -22), Difference("endpoints.p0.rx", "a", "b"))
    two = Case(inserts=(MapEntry(0, "c0"),), program=(Invocation(), Invocation((PopData(0, 4),))),
               events=(Send("c0", 10), Send("c0", 10)))
    assert root_kind(step, kernel, None, two) == "runs.pop_data"  # run 1 runs the second step list
    assert root_kind(step, kernel) == "runs"  # without the case: where it shows
    # The same helper's answer in a case with other helpers and events: the same bucket.
    other = Case(inserts=(MapEntry(0, "c0"),), program=(Invocation((PushData(0, 1),)), Invocation((PopData(0, 4),))),
                 events=(Send("c0", 10), Send("c0", 10), Send("c0", 3)))
    a = Signature.of(diff_kinds(step), two, "r", root_kind(step, kernel, None, two))
    b = Signature.of(diff_kinds(step[:1]), other, "r", root_kind(step[:1], kernel, None, other))
    assert a.bucket() == b.bucket() and a.slug() == "runs.pop_data"
    # The minimizer keeps that helper's answer: a case where only the drain differs is another cause.
    assert same_cause("runs.pop_data", "runs.pop_data") and not same_cause("runs.pop_data", "endpoints")
    assert not same_cause("runs.pop_data", "runs.push_data") and same_cause("runs", "runs.pop_data")
