"""Each named kernel profile is told apart by the probes, from the model's own outcomes under it,
also when it is far from the reference (Debian's 6.1 and 6.12 differ in several behaviours at
once, and one probe's case shows more than its own behaviour)."""

from __future__ import annotations

import pytest

import sim
from diffuzz.engine.probes import choose_profile, run_probes
from sim.profile import PROFILES


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_probes_choose_the_profile_whose_model_answers_them(name: str) -> None:
    profile = PROFILES[name]
    choice = choose_profile(run_probes(lambda case: sim.run(case, profile)))
    assert choice.profile.name == name and choice.exact, choice.how()
