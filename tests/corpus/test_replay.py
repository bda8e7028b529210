"""Corpus replay: every seed and every saved finding runs on the kernel and on the model.

What each must do, by kind and triage status (finding.md's `status:` line):

| file                                   | expectation                                           |
|----------------------------------------|-------------------------------------------------------|
| corpus/seeds/*.json                    | kernel and model agree                                |
| findings with status new               | agree: an untriaged finding keeps this test red until |
|                                        | the model is fixed or the finding is triaged          |
| findings with status model-fixed       | agree (a regression test for the model fix)           |
| findings with status kernel-bug or     | on a release listed in bucket.json: the same fields   |
| documented                             | still differ (fail otherwise: the model now mimics    |
|                                        | the bug, or the finding changed).  On another release:|
|                                        | still differing passes; agreeing is reported as a     |
|                                        | skip naming both releases ("no longer shows it")      |

Kernel runs go through kernel_runner.local.run (one reused worker); the model is sim.run under
the profile this kernel's probes choose (the `kernel_profile` fixture, tests/conftest.py), so the
replay checks that this kernel still behaves like its profile.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from diffuzz.contract.case import Case, load_case
from diffuzz.engine.compare import compare
from diffuzz.engine.expect import model_out_of_scope
from diffuzz.engine.corpus import Corpus, format_diff, read_releases, read_status
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.probes import ProfileChoice
from diffuzz.engine.signature import diff_kinds
from sim.profile import Profile

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted((ROOT / "corpus" / "seeds").glob("*.json"))
BUCKETS = list(Corpus(ROOT / "corpus").buckets())


def _model(case: Case, profile: Profile) -> Outcome:
    run: Any = importlib.import_module("sim").__dict__.get("run") or importlib.import_module("sim.run")
    if isinstance(run, ModuleType):
        run = run.run
    return run(case, profile)


def _kernel(case: Case) -> Outcome:
    local = importlib.import_module("kernel_runner.local")
    outcome = local.run(case)
    if "error" in outcome.notes:
        pytest.fail(f"the kernel side could not run the case: {outcome.notes['error']}")
    return outcome


def _both(case: Case, profile: Profile) -> tuple[Outcome, Outcome, list]:
    k = _kernel(case)
    m = _model(case, profile)
    return k, m, compare(k, m)


@pytest.mark.kernel
@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_seed_agrees(path: Path, request: pytest.FixtureRequest, kernel_profile: ProfileChoice) -> None:
    case = load_case(str(path))
    out_of_scope = model_out_of_scope(case)
    if out_of_scope:
        request.applymarker(pytest.mark.xfail(reason=out_of_scope, strict=True))
    _, _, diffs = _both(case, kernel_profile.profile)
    assert not diffs, (f"{path.name}: kernel and model ({kernel_profile.profile.name}) differ\n"
                       + format_diff(case, diffs))


@pytest.mark.kernel
@pytest.mark.parametrize("bucket", BUCKETS, ids=lambda p: p.name)
def test_finding_replays(bucket: Path, kernel_profile: ProfileChoice) -> None:
    status = read_status(bucket)
    case = load_case(str(bucket / "case.json"))
    k, _, diffs = _both(case, kernel_profile.profile)
    if status in ("new", "model-fixed"):
        assert not diffs, (f"{bucket.name} (status {status}): kernel and model still differ; fix the model or "
                           f"triage the finding in finding.md\n" + format_diff(case, diffs))
        return
    # kernel-bug / documented: the recorded difference is the expected behaviour.
    recorded = read_releases(bucket)
    release = str(k.notes.get("kernel") or os.uname().release)
    saved = diff_kinds(compare(_load_outcome(bucket / "kernel.json"), _load_outcome(bucket / "model.json")))
    now = diff_kinds(diffs)
    if release in recorded:
        assert now == saved, (f"{bucket.name} ({status}, recorded on {', '.join(recorded)}): expected the fields "
                              f"{sorted(saved)} to differ on {release}, got {sorted(now)}\n" + format_diff(case, diffs))
    elif not now:
        pytest.skip(f"{bucket.name} ({status}, recorded on {', '.join(recorded)}): kernel {release} no longer shows "
                    f"it; the kernel and the model agree here (fixed in this release?)")
    else:
        assert now == saved, (f"{bucket.name} ({status}): on {release} other fields differ than on "
                              f"{', '.join(recorded)}: {sorted(now)} vs {sorted(saved)}\n" + format_diff(case, diffs))


def _load_outcome(path: Path) -> Outcome:
    from diffuzz.contract.outcome import loads_outcome

    return loads_outcome(path.read_text())


def test_every_bucket_is_complete_and_triaged_with_a_known_status() -> None:
    # Runs without a kernel: a bucket someone edited by hand must still parse.
    for bucket in BUCKETS:
        load_case(str(bucket / "case.json"))
        _load_outcome(bucket / "kernel.json")
        _load_outcome(bucket / "model.json")
        assert read_status(bucket) in ("new", "model-fixed", "kernel-bug", "documented")
