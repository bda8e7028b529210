"""Is a finding one of the model's own kernel profile behaviours, switched the other way?

A kernel that is not quite the profile the probes chose (a new build, a profile forced with
--kernel-profile, a probe that decided wrongly) differs from the model wherever that behaviour
matters: in many fields, helpers and event kinds, so in many signature buckets, though it is
one cause.  Triage asks the model again on the finding's case under the profile with each
behaviour (sim/profile.py BEHAVIOURS) switched; when exactly one switch makes the model agree
with the kernel (no difference, or only a documented kernel bug the model then names), the
finding is that behaviour: it is filed under one bucket per behaviour, `profile.<behaviour>-…`,
and the loop says once that this kernel does not look like its profile.

Two or more switches that each explain it say nothing certain (a small case can be indifferent
to several), and the finding keeps its ordinary bucket.
"""

from __future__ import annotations

import sim
from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.oracle import judge
from sim.profile import BEHAVIOURS, Profile, with_behaviours

PREFIX = "profile."


def explaining_behaviour(case: Case, kernel: Outcome, profile: Profile) -> str | None:
    """The one behaviour whose switch makes the model under `profile` agree with `kernel` on
    `case`, or None."""
    found = []
    for name in BEHAVIOURS:
        switched = with_behaviours(profile, {name: not profile.has(name)})
        try:
            v = judge(case, kernel, sim.run(case, switched))
        except Exception:  # a model crash under a switched profile explains nothing
            continue
        if not v.model_broken and (not v.kinds or v.known):
            found.append(name)
    return found[0] if len(found) == 1 else None


def sentence(behaviour: str, profile: Profile) -> str:
    """What a finding explained by `behaviour` says about the kernel."""
    state = "without" if profile.has(behaviour) else "with"
    return (f"the model agrees with the kernel under {profile.name} {state} {behaviour}: this kernel does not "
            f"follow its profile there (a new build? check the probes: diffuzz doctor; --kernel-profile)")
