"""A kernel that is not quite its profile: its findings go to one bucket per behaviour
(diffuzz/engine/explain.py), however many fields, helpers and events they touch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import sim
from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.corpus import Corpus
from diffuzz.engine.explain import explaining_behaviour
from diffuzz.engine.function_pool import FunctionPool
from diffuzz.engine.generate import random_case
from diffuzz.engine.loop import Engine, FuzzConfig
from sim.profile import PROFILES

CALIBRATED = PROFILES["6.18.44-v657"]  # with stale_sk_redir
NEWER = PROFILES["6.18.44-v1045"]  # the same without it


def _newer_kernel(case: Case) -> Outcome:
    return sim.run(case, NEWER)


def _model(case: Case) -> Outcome:
    return sim.run(case, CALIBRATED)


def test_a_kernel_one_behaviour_away_from_the_profile_fills_one_bucket(tmp_path: Path) -> None:
    engine = Engine(FuzzConfig(seed=9, cases=3000, batch=500, minimize_seconds=1), FunctionPool(_newer_kernel),
                    _model, Corpus(tmp_path), profile=CALIBRATED)
    st = engine.run()
    assert st.findings >= 5, st  # the redirect rule shows in many cases of the stream
    found = [b.name for b in Corpus(tmp_path).buckets() if not b.name.startswith("known.")]
    assert found and all(name.startswith("profile.stale_sk_redir-") for name in found), found
    assert len(found) == 1
    md = (Corpus(tmp_path).findings / found[0] / "finding.md").read_text()
    assert "without stale_sk_redir" in md


def test_without_the_profile_the_same_findings_spread_over_many_buckets(tmp_path: Path) -> None:
    # What the one bucket saves: the ordinary signature names them by where they show.
    st = Engine(FuzzConfig(seed=9, cases=3000, batch=500, minimize_seconds=1), FunctionPool(_newer_kernel),
                _model, Corpus(tmp_path)).run()
    found = [b for b in Corpus(tmp_path).buckets() if not b.name.startswith("known.")]
    assert st.findings >= 5 and len(found) > 3


def test_a_difference_no_behaviour_explains_is_left_alone() -> None:
    case = random_case(9, 0)
    k = sim.run(case, CALIBRATED)
    off = replace(k, run_count=k.run_count + 1)  # a planted kind of difference no profile has
    assert explaining_behaviour(case, off, CALIBRATED) is None
