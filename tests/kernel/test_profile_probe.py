"""The probes on this kernel (diffuzz/engine/probes.py): every behaviour decided, one profile matched.

This is the one test that fails when the kernel has a behaviour no profile knows; the tests that
compare the kernel with the model skip then (tests/conftest.py `kernel_profile`), so the new
behaviour is reported here, by probe, and not as scattered differences.
"""

from __future__ import annotations

import pytest

from diffuzz.engine.probes import choose_profile, run_probes
from kernel_runner import local
from sim.profile import PROFILES


@pytest.mark.kernel
def test_this_kernel_matches_a_profile() -> None:
    probes = run_probes(local.run)
    for r in probes:
        undecided = [b for b, v in r.found.items() if v is None]
        assert not undecided, f"probe {r.probe} could not decide {', '.join(undecided)}: {r.detail}"
    choice = choose_profile(probes)
    assert choice.exact, f"this kernel matches no profile: {choice.how()}"


@pytest.mark.kernel
def test_forcing_another_profile_shows_the_disagreement() -> None:
    probes = run_probes(local.run)
    mine = choose_profile(probes).profile
    for other in PROFILES.values():
        if other is mine:
            continue
        forced = choose_profile(probes, other.name)
        assert forced.forced and not forced.exact
        differing = set(mine.behaviours ^ other.behaviours)
        assert {b for b, _, _ in forced.disagreements} == differing
