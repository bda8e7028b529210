"""The fuzz loop with a campaign attached (diffuzz/engine/loop.py + diffuzz/engine/campaign.py), against the
model as its own reference (FunctionPool), so no kernel is needed: counts and coverage go to
the campaign, a resumed campaign continues the case stream, findings, flaky differences, hangs
and failed kernel runs take their paths, and a finding the disk refuses is kept and saved later."""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import diffuzz.engine.saving as saving_module
from diffuzz.cli.status import Status, status_text
from diffuzz.contract.case import Case, loads_case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.campaign import EVENTS, Campaign
from diffuzz.engine.confirm import Independent
from diffuzz.engine.corpus import Corpus, Finding, Recorded
from diffuzz.engine.features import features
from diffuzz.engine.function_pool import FunctionPool
from diffuzz.engine.generate import random_case
from diffuzz.engine.loop import Engine, FuzzConfig, FuzzStats


def _model() -> Any:
    import sim

    return sim.run


def _open(workdir: Path) -> Campaign:
    return Campaign.open(workdir, ["test"], "test-release", "random", stderr=io.StringIO())


def _events(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / EVENTS).read_text().splitlines()]


def _off_by_one(case: Case) -> Outcome:
    """A 'kernel' that runs the program once more than the model says, on every case."""
    out = _model()(case)
    return replace(out, run_count=out.run_count + 1)


def test_campaign_counts_coverage_and_resume_continue_the_stream(tmp_path: Path) -> None:
    seen: list[int] = []

    def source(i: int) -> Case:
        seen.append(i)
        return random_case(5, i)

    camp = _open(tmp_path)
    engine = Engine(FuzzConfig(seed=5, cases=40, batch=16), FunctionPool(_model()), _model(), Corpus(tmp_path),
                    campaign=camp, source=source)
    st = engine.run()
    camp.close("test")
    first = list(seen)
    expected = set().union(*(features(random_case(5, i), _model()(random_case(5, i))) for i in first))
    # The model as the kernel agrees with the model; the only findings are the documented kernel
    # bugs the model copies (its own outcomes break those promises), counted as known.
    assert st.cases == 40 and all(b.name.startswith("known.") for b in Corpus(tmp_path).buckets())
    assert st.coverage == len(expected) == camp.feature_coverage > 0

    seen.clear()
    camp = _open(tmp_path)
    engine = Engine(FuzzConfig(seed=5, cases=10, batch=16), FunctionPool(_model()), _model(), Corpus(tmp_path),
                    campaign=camp, source=source)
    st = engine.run()
    camp.close("test")
    assert st.cases_before == 40 and st.total_cases() == 50 and st.sessions == 2
    assert camp.execs == 50 and camp.feature_coverage >= len(expected)
    assert not set(seen) & set(first), "a resumed campaign ran a case of the first session again"
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["execs_done"] == 50 and stats["feature_coverage"] == camp.feature_coverage
    assert stats["stream_seed"] == 5


def test_findings_go_to_the_campaign_and_its_findings_folder(tmp_path: Path) -> None:
    camp = _open(tmp_path)
    engine = Engine(FuzzConfig(seed=1, cases=6, batch=6, minimize_seconds=2), FunctionPool(_off_by_one), _model(),
                    Corpus(tmp_path), campaign=camp)
    st = engine.run()
    camp.close("test")
    assert st.findings == 6 and st.new_buckets
    kinds = [e["kind"] for e in _events(tmp_path)]
    assert kinds.count("new_finding") == len(st.new_buckets)
    assert kinds.count("new_finding") + kinds.count("finding") == 6
    for b in st.new_buckets:
        assert (tmp_path / "findings" / b / "bucket.json").exists()
    assert json.loads((tmp_path / "stats.json").read_text())["unique_findings"] == len(st.new_buckets)


def test_flaky_difference_is_an_event(tmp_path: Path) -> None:
    calls: dict[Case, int] = {}

    def first_run_wrong(case: Case) -> Outcome:
        calls[case] = calls.get(case, 0) + 1
        return _off_by_one(case) if calls[case] == 1 else _model()(case)

    camp = _open(tmp_path)
    st = Engine(FuzzConfig(seed=2, cases=5, batch=5), FunctionPool(first_run_wrong), _model(), Corpus(tmp_path),
                campaign=camp).run()
    camp.close("test")
    assert st.flaky == 5 and st.findings == 0
    flaky = [e for e in _events(tmp_path) if e["kind"] == "flaky"]
    assert len(flaky) == 5
    assert not (tmp_path / "findings").exists() or not list((tmp_path / "findings").iterdir())
    # Each one is kept for a person: the case, and what the first run and the re-run saw.
    for e in flaky:
        saved = Path(e["saved"])
        assert saved.parent == tmp_path / "flaky" and loads_case(saved.read_text()) in calls
        why = saved.with_suffix(".txt").read_text()
        assert why.startswith("first run:") and "the re-run agreed with the model" in why


def test_flaky_cases_kept_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saving_module, "FLAKY_KEPT", 3)
    seen: set[Case] = set()

    def first_run_wrong(case: Case) -> Outcome:
        first = case not in seen
        seen.add(case)
        return _off_by_one(case) if first else _model()(case)

    st = Engine(FuzzConfig(seed=2, cases=5, batch=5), FunctionPool(first_run_wrong), _model(),
                Corpus(tmp_path)).run()
    assert st.flaky == 5 and len(list((tmp_path / "flaky").glob("*.json"))) == 3


class _Scripted(FunctionPool):
    """The model as the kernel, except for scripted outcomes on chosen cases (by order)."""

    def __init__(self, script: dict[int, Outcome]) -> None:
        super().__init__(_model())
        self.script = script
        self.n = 0

    def imap(self, cases: Iterable[Case]) -> Iterator[Outcome]:
        for case in cases:
            self.n += 1
            yield self.script.get(self.n) or self.run(case)


def test_hang_is_a_hang_finding_and_a_dead_worker_is_rerun(tmp_path: Path) -> None:
    hang = Outcome(side="kernel", hang=True, notes={"hang": "no answer within 1 s; worker 1 was killed"})
    died = Outcome(side="kernel", notes={"error": "worker 2 died (signal 9) while running the case"})
    camp = _open(tmp_path)
    st = Engine(FuzzConfig(seed=3, cases=10, batch=10), _Scripted({3: hang, 6: died}), _model(), Corpus(tmp_path),
                campaign=camp).run()
    camp.close("test")
    assert st.cases == 10 and st.hangs == 1 and st.retried == 1 and st.kernel_errors == 0 and st.findings == 0
    events = _events(tmp_path)
    hangs = [e for e in events if e["kind"] == "hang"]
    assert len(hangs) == 1 and Path(hangs[0]["saved"]).exists()
    assert [e["kind"] for e in events].count("worker_lost") == 1
    assert json.loads((tmp_path / "stats.json").read_text())["hangs"] == 1


class _FullDisk(Corpus):
    """A corpus whose first `fail` saves fail like a full disk (the tmpfs version is in
    tests/faults/test_fuzz_faults.py)."""

    def __init__(self, root: Path, fail: int) -> None:
        super().__init__(root)
        self.fail = fail

    def record(self, f: Finding) -> Recorded:
        if self.fail > 0:
            self.fail -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().record(f)


def test_finding_refused_by_a_full_disk_is_kept_and_saved_later(tmp_path: Path, capsys: Any) -> None:
    camp = _open(tmp_path)
    engine = Engine(FuzzConfig(seed=1, cases=1, batch=1, minimize_seconds=2), FunctionPool(_off_by_one), _model(),
                    _FullDisk(tmp_path, fail=1), campaign=camp)
    st = engine.run()  # the save fails once, then the retry at the end of run() succeeds
    camp.close("test")
    err = capsys.readouterr().err
    assert "cannot save finding" in err and "No space left on device" in err and "saved after all" in err
    assert st.findings == 1 and st.unsaved == 0 and engine.unsaved_cases() == []
    assert len(st.new_buckets) == 1 and (tmp_path / "findings" / st.new_buckets[0] / "case.json").exists()
    kinds = [e["kind"] for e in _events(tmp_path)]
    assert kinds.index("problem") < kinds.index("new_finding")


def test_finding_never_saved_is_handed_back(tmp_path: Path) -> None:
    engine = Engine(FuzzConfig(seed=1, cases=1, batch=1, minimize_seconds=2), FunctionPool(_off_by_one), _model(),
                    _FullDisk(tmp_path, fail=10**6))
    st = engine.run()
    assert st.unsaved == 1
    [text] = engine.unsaved_cases()
    assert json.loads(text)["format"] >= 1  # the case itself, ready to be saved by hand


def test_status_without_a_terminal_prints_at_most_every_log_every() -> None:
    out = io.StringIO()
    status = Status(Console(file=out, force_terminal=False, width=300), log_every=3600.0)
    st = FuzzStats(cases=5, coverage=77)
    for what in ("tick", "finding", "tick", "hang", "flaky"):
        status.update(what, st)
    assert out.getvalue().count("cases 5") == 1
    assert "coverage 77" in status_text(st).plain


def test_findings_after_a_stop_are_saved_without_the_independent_check(tmp_path: Path) -> None:
    built: list[int] = []

    def independent_runner() -> FunctionPool:
        built.append(1)  # the bcc pool would be started here (0.4 s per program compiled)
        return FunctionPool(_off_by_one)

    def kernel(case: Case) -> Outcome:
        engine.stop = True  # SIGTERM (or --duration passing) while the batch's first case runs
        return _off_by_one(case)

    engine = Engine(FuzzConfig(seed=3, batch=4, minimize_seconds=5), FunctionPool(kernel), _model(),
                    Corpus(tmp_path), independent=Independent(independent_runner))
    st = engine.run()  # the mismatch of that case is still confirmed and saved, quickly
    assert st.findings == 1 and built == []
    [bucket] = st.new_buckets
    md = (tmp_path / "findings" / bucket / "finding.md").read_text()
    assert "independent backend: not checked: the run's time was up" in md
