"""Kernel behaviour profiles (sim/profile.py) and choosing one from probes (diffuzz/engine/probes.py),
without a kernel.

- every corpus finding's recorded kernel.json is reproduced by the model under each profile its
  bucket.json names: the recorded outcomes of a build stay the evidence for its profile;
- each behaviour has a probe whose outcome it changes (a probe that cannot tell is useless);
- choosing: an exact match, a forced profile, and a kernel that matches none (the nearest, and the
  probe named).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sim
from diffuzz.contract.case import load_case
from diffuzz.contract.outcome import loads_outcome
from diffuzz.engine.compare import compare
from diffuzz.engine.corpus import Corpus, format_diff, read_profiles
from diffuzz.engine.probes import PROBES, ProbeResult, choose_profile
from sim.profile import (
    BEHAVIOURS,
    PROFILES,
    REFERENCE,
    STALE_SK_REDIR,
    UnknownProfile,
    get_profile,
    with_behaviours,
)

ROOT = Path(__file__).resolve().parents[2]
BUCKETS = list(Corpus(ROOT / "corpus").buckets())
EVIDENCE = [(b, name) for b in BUCKETS for name in read_profiles(b)]


@pytest.mark.parametrize(("bucket", "profile"), EVIDENCE, ids=lambda v: v if isinstance(v, str) else v.name)
def test_recorded_kernel_outcome_is_reproduced_under_its_profile(bucket: Path, profile: str) -> None:
    case = load_case(str(bucket / "case.json"))
    recorded = loads_outcome((bucket / "kernel.json").read_text())
    diffs = compare(recorded, sim.run(case, get_profile(profile)))
    assert not diffs, f"{bucket.name}: the model under {profile} no longer reproduces kernel.json\n" + format_diff(
        case, diffs)


def test_every_bucket_names_its_profiles_or_says_why_not() -> None:
    import json

    for bucket in BUCKETS:
        state = json.loads((bucket / "bucket.json").read_text())
        assert "profiles" in state, f"{bucket.name}: bucket.json has no profiles list"
        assert set(state["profiles"]) <= set(PROFILES), bucket.name
        if not state["profiles"]:
            assert state.get("profiles_note"), f"{bucket.name}: no profile and no profiles_note saying why"
    assert len(EVIDENCE) >= 30  # the first campaign's kernel outcomes, recorded on 6.18.44-fc-v657


def test_the_two_profiles_differ_on_the_older_builds_evidence() -> None:
    # Five recorded fc-v657 outcomes depend on the stale target: the other profile must not reproduce them
    # (else the evidence above would prove nothing about the behaviour).
    other = get_profile("6.18.44-v1045")
    differing = [b.name for b, name in EVIDENCE if name == REFERENCE.name and compare(
        loads_outcome((b / "kernel.json").read_text()), sim.run(load_case(str(b / "case.json")), other))]
    assert len(differing) == 5, differing


def test_every_behaviour_has_a_probe_that_tells_it() -> None:
    covered = {b for p in PROBES for b in p.behaviours}
    assert covered == set(BEHAVIOURS)
    for probe in PROBES:
        for b in probe.behaviours:
            on = sim.run(probe.case, with_behaviours(REFERENCE, {b: True}))
            off = sim.run(probe.case, with_behaviours(REFERENCE, {b: False}))
            assert compare(on, off), f"probe {probe.name} cannot tell {b}"


def test_model_notes_its_profile() -> None:
    for profile in PROFILES.values():
        assert sim.run(PROBES[0].case, profile).notes["profile"] == profile.name


def _probes(**found: bool | None) -> tuple[ProbeResult, ...]:
    by_probe = []
    for p in PROBES:
        values = {b: found.get(b, REFERENCE.has(b)) for b in p.behaviours}
        # An undecided behaviour here is one the probe could not decide (it matched no variant).
        by_probe.append(ProbeResult(p.name, values, "synthetic", matched=None not in values.values()))
    return tuple(by_probe)


def test_choose_exact_match() -> None:
    choice = choose_profile(_probes(stale_sk_redir=False))
    assert choice.profile.name == "6.18.44-v1045" and choice.exact
    assert choose_profile(_probes()).profile is REFERENCE


def test_choose_forced_names_the_disagreeing_probe() -> None:
    choice = choose_profile(_probes(), "6.18.44-v1045")
    assert choice.forced and not choice.exact
    assert choice.disagreements == ((STALE_SK_REDIR, True, False),)
    assert "probe stale_redirect finds stale_sk_redir present" in choice.line()


def test_no_profile_matches_nearest_is_used_and_named() -> None:
    # TCP's queue added to a FIONREAD that ignores ingress_msg: no kernel does that.  The nearest
    # profile (one disagreement) is 7.2.13, which has both.
    choice = choose_profile(_probes(fionread_ingress_msg=False, fionread_tcp_inq=True))
    assert choice.profile.name == "7.2.13" and not choice.exact
    assert "matches no profile, using the nearest" in choice.line()
    assert "probe fionread finds fionread_ingress_msg absent" in choice.line()
    undecided = choose_profile(_probes(stale_sk_redir=None))
    assert not undecided.exact and "stale_sk_redir undecided" in undecided.line()


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(UnknownProfile, match=re.escape("known: 6.18.44-v657, 6.18.44-v1045")):
        choose_profile((), "6.18.44-v9")
    with pytest.raises(UnknownProfile):
        with_behaviours(REFERENCE, {"no_such_rule": True})
