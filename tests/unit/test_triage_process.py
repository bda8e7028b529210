"""The triage process (diffuzz/engine/triage_process.py) with a function as the kernel: the loop
hands mismatches over, the child triages them, the loop saves them; what the child never
finished is kept under unconfirmed/ and `Engine.retriage` finishes it.  The real kernel's
version (signals, a killed triage process, `diffuzz triage`) is in tests/faults/test_triage_faults.py.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import diffuzz.engine.loop as loop
import sim
from diffuzz.contract.case import Case, load_case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.campaign import EVENTS, Campaign
from diffuzz.engine.confirm import Independent
from diffuzz.engine.corpus import Corpus
from diffuzz.engine.function_pool import FunctionPool
from diffuzz.engine.generate import random_case
from diffuzz.engine.loop import Engine, FuzzConfig
from diffuzz.engine.triage import Mismatch
from diffuzz.engine.triage_process import PER_ROOT, TriageProcess
from diffuzz.engine.zone import DEFAULT


def _off_by_one(case: Case) -> Outcome:
    out = sim.run(case)
    return replace(out, run_count=out.run_count + 1)


def _open(workdir: Path) -> Campaign:
    return Campaign.open(workdir, ["test"], "test-release", "random", stderr=io.StringIO())


def _events(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / EVENTS).read_text().splitlines()]


def test_findings_are_triaged_in_the_child_and_saved_by_the_loop(tmp_path: Path) -> None:
    camp = _open(tmp_path)
    engine = Engine(FuzzConfig(seed=1, cases=64, batch=16, minimize_seconds=2), FunctionPool(_off_by_one), sim.run,
                    Corpus(tmp_path), campaign=camp, triage_kernel=lambda: FunctionPool(_off_by_one))
    st = engine.run()
    camp.close("test")
    # Every case differs (run_count): each one triaged or counted on the bucket its key got, or
    # turned away while its root kind was queued; none is left unconfirmed (the grace suffices).
    assert st.mismatches == 64 and st.unconfirmed == 0 and st.triage_pending == 0
    assert st.findings + st.triage_skipped == 64 and st.new_buckets
    buckets = list(Corpus(tmp_path).buckets())
    counted = sum(json.loads((b / "bucket.json").read_text())["count"] for b in buckets)
    assert counted == st.findings  # the hits were written
    events = _events(tmp_path)
    assert sum(e.get("count", 1) for e in events if e["kind"] in ("new_finding", "finding")) == st.findings
    for b in buckets:  # triaged in the child: minimized, with the notes the loop used to write
        md = (b / "finding.md").read_text()
        assert "minimized size" in md and "seed" in md


def test_a_child_that_cannot_start_its_kernel_leaves_triage_to_the_loop(tmp_path: Path) -> None:
    def broken() -> Any:
        raise OSError("no kernel here")

    engine = Engine(FuzzConfig(seed=3, cases=24, batch=8, minimize_seconds=1), FunctionPool(_off_by_one), sim.run,
                    Corpus(tmp_path), triage_kernel=broken)
    st = engine.run()
    # What the child held when it failed is kept; everything after is triaged inline.
    kept = sorted((tmp_path / "unconfirmed").glob("*.json"))
    assert st.unconfirmed == len(kept) <= PER_ROOT and st.findings + st.unconfirmed + st.triage_skipped == 24
    for p in kept:
        assert "no kernel here" in p.with_suffix(".txt").read_text()


def test_a_child_gone_before_the_first_job_still_says_why(tmp_path: Path) -> None:
    # The race CI met in the test above: the child said why and exited before the loop's first
    # write, so the write meets a closed pipe.  The reason is the child's, not "Broken pipe".
    def broken() -> Any:
        raise OSError("no kernel here")

    tp = TriageProcess(broken, sim.run, Independent(None), DEFAULT, 1.0)
    try:
        tp._proc.join(30)  # it has said why and gone
        assert tp._proc.exitcode == 0
        job = Mismatch(3, 0, random_case(3, 0), ("run_count",), (), "run_count")
        assert tp.submit(job) is None  # taken: the loop does not yet know the child is gone
        assert tp.dead is not None and "no kernel here" in tp.dead, tp.dead
        assert tp.take_held() == [job]
    finally:
        tp.close()


@pytest.mark.parametrize("how", ["the child fails", "the grace ends"])
def test_every_mismatch_of_a_key_is_counted_when_its_triage_never_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # Two cases again and again, differing in two ways: two keys of two roots.  The first of each
    # goes to triage, the others only count beside it; when that triage never ends (a child that
    # cannot start, or the grace over while the other is minimized), the first is unconfirmed and
    # the others are triage_skipped, not lost.
    monkeypatch.setattr(loop, "TRIAGE_GRACE", 0.2)
    a, b = random_case(4, 0), random_case(4, 1)

    def differs(c: Case) -> Outcome:
        return _off_by_one(c) if c == a else replace(sim.run(c), inserts=(*sim.run(c).inserts, 0))

    def slow(c: Case) -> Outcome:
        time.sleep(0.05)  # the minimizer outlives the grace
        return differs(c)

    def broken() -> Any:
        raise OSError("no kernel here")

    engine = Engine(FuzzConfig(seed=4, cases=40, batch=16, minimize_seconds=30), FunctionPool(differs), sim.run,
                    Corpus(tmp_path), source=lambda i: a if i % 2 else b,
                    triage_kernel=broken if how == "the child fails" else lambda: FunctionPool(slow))
    st = engine.run()
    assert st.mismatches == 40 and st.unconfirmed >= 1 and st.triage_skipped > 0
    assert st.mismatches == st.findings + st.flaky + st.unconfirmed + st.triage_skipped


def test_what_the_grace_did_not_reach_is_unconfirmed_and_retriage_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "TRIAGE_GRACE", 0.2)

    def slow(case: Case) -> Outcome:
        time.sleep(0.05)  # the child's kernel: every minimizer step costs time
        return _off_by_one(case)

    engine = Engine(FuzzConfig(seed=4, cases=48, batch=16, minimize_seconds=30), FunctionPool(_off_by_one),
                    sim.run, Corpus(tmp_path), triage_kernel=lambda: FunctionPool(slow))
    st = engine.run()
    kept = sorted((tmp_path / "unconfirmed").glob("*.json"))
    assert st.unconfirmed == len(kept) > 0
    why = kept[0].with_suffix(".txt").read_text()
    assert "the run ended before triage reached it" in why and "run_count" in why
    # `diffuzz triage` (Engine.retriage, inline) finishes them.
    later = Engine(FuzzConfig(seed=4, minimize_seconds=1), FunctionPool(_off_by_one), sim.run, Corpus(tmp_path))
    said = [later.retriage(load_case(str(p)), i) for i, p in enumerate(kept)]
    assert all(s.startswith("a finding") for s in said), said
    assert later.stats.findings == len(kept)


def test_a_stop_takes_back_what_the_child_holds(tmp_path: Path) -> None:
    """finish() asks the child to stop: its minimizer ends at once, the case comes back triaged
    (unminimized), and what was still queued is handed back for unconfirmed/."""

    def slow(case: Case) -> Outcome:
        time.sleep(0.05)  # every minimizer step costs time, so the job outlives the grace
        return _off_by_one(case)

    triage = TriageProcess(lambda: FunctionPool(slow), sim.run, Independent(None), DEFAULT, minimize_seconds=60)
    cases = [random_case(7, i) for i in range(40)]
    jobs = [Mismatch(7, i, c, frozenset({"run_count"}), (), root=f"r{i % 3}") for i, c in enumerate(cases)]
    taken = [j for j in jobs if triage.has_room(j.root) and triage.submit(j) is None]
    assert len(taken) == 3 * PER_ROOT  # bounded by root kind
    done, left = triage.finish(grace=0.5)
    assert len(done) + len(left) == len(taken) and done  # nothing lost
    assert all(r.reproduced for r in done)
    assert not os.path.exists(f"/proc/{triage.pid}"), "the triage process was not reaped"
