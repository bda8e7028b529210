"""Triage of one mismatch: confirm it, minimize it, check it on the independent backend.

The loop (diffuzz/engine/loop.py) hands a `Mismatch` over and goes on; `Triage.run` turns it into
a `Triaged` that the loop saves.  It runs in the triage process (triage_process.py) during a
campaign, with that process's own kernel worker, or inline where there is no such process
(the atheris engine's step, `diffuzz triage WORKDIR`).  It never writes a file: saving stays in
the process that owns the corpus and the campaign, so a triage process that dies loses nothing
(the loop still holds the mismatch and keeps it under unconfirmed/).

Steps, as confirm.py describes: a re-run (a difference that does not reproduce is flaky); the
minimizer, keeping the first difference's cause (signature.same_cause); a re-run of the small
case (a minimization into a timing-dependent corner keeps the original); the bcc backend on the
small case.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import Difference
from diffuzz.engine.confirm import Independent, rerun, shows
from diffuzz.engine.explain import explaining_behaviour, sentence
from diffuzz.engine.minimize import complexity, minimize
from diffuzz.engine.oracle import judge
from diffuzz.engine.signature import Kinds, case_features, root_kind
from diffuzz.engine.zone import DEFAULT, GenConfig, zone_violation
from sim.profile import Profile

# (differing fields, helpers, events): mismatches with the same key are one triage
Key = tuple[Kinds, tuple[str, ...], tuple[str, ...]]
NOT_CHECKED = ("not checked: the run's time was up; check it with diffuzz run CASE --side kernel --backend bcc")


def key_of(kinds: Kinds, case: Case) -> Key:
    return (kinds, *case_features(case))


@dataclass(frozen=True)
class Mismatch:
    """A difference (or a broken promise) the loop saw once, before any re-run."""

    seed: int
    index: int  # the case's index in the stream
    case: Case
    kinds: Kinds
    differences: tuple[Difference, ...]
    root: str = ""  # signature.root_kind of the first run: what the bucket will most likely be named by
    # The promises the kernel broke beside the difference (Verdict.shadowed): the re-run shows the
    # finding when it breaks them again, whatever else comes or goes (confirm.shows).
    broken: frozenset[str] = frozenset()

    @property
    def key(self) -> int:
        """key_of(...)'s hash, with the promises broken beside it: what the loop keeps for every
        key it triaged, for the whole run (about 100 bytes each, where the key itself, unpickled
        from the triage process, took 1 kB).  A breach never only counts on a key that had none."""
        return hash((key_of(self.kinds, self.case), self.broken))

    @property
    def name(self) -> str:
        return f"seed{self.seed}-case{self.index}"


@dataclass(frozen=True)
class Triaged:
    """What triage made of a Mismatch.  Not reproduced: `again` holds the re-run's differences
    (flaky).  Reproduced: `case` (the minimized one), both outcomes on it, its differences and
    kinds, and the notes for the finding."""

    job: Mismatch
    reproduced: bool
    again: tuple[Difference, ...] = ()
    case: Case | None = None
    kernel: Outcome | None = None
    model: Outcome | None = None
    differences: tuple[Difference, ...] = ()
    kinds: Kinds = frozenset()
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # spent minimizing
    explained: str | None = None  # the profile behaviour whose switch explains it (explain.py)


def size_text(case: Case) -> str:
    c = complexity(case)
    return f"{c[0]} events, {c[1]} steps in {c[2]} step list(s), {c[3]} inserts, {c[4]} pair(s)"


class Triage:
    """Triage on one kernel runner (anything with run(case) -> Outcome) and the model."""

    def __init__(self, kernel: Any, model: Callable[[Case], Outcome], independent: Independent | None = None,
                 gen: GenConfig = DEFAULT, stop: Callable[[], bool] = lambda: False,
                 profile: Profile | None = None) -> None:
        """`profile`: the model's kernel profile, to ask whether a finding is one of its behaviours
        switched (explain.py); None: not asked (a model that is not sim.run under a profile)."""
        self.kernel = kernel
        self.profile = profile
        self.model = model
        self.independent = independent or Independent(None)
        self.gen = gen
        self.stop = stop  # True: end minimizing now and keep the best so far

    def run(self, job: Mismatch, budget: float, check_independent: bool = True) -> Triaged:
        """Triage `job`, minimizing for at most `budget` seconds; without `check_independent`
        (a run whose time is up) the bcc backend is not asked (it compiles C: 0.4 s a program)."""
        again = rerun(job.case, job.kinds, self.kernel, self.model, broken=job.broken)
        if not again.reproduced:
            return Triaged(job, False, again=again.differences)
        t0 = time.monotonic()
        # A case from inside the deterministic zone is kept inside it while shrinking.
        admissible = self._in_zone if zone_violation(job.case, self.gen) is None else None
        # Minimized to what the cause needs: the first difference stays of the same kind, the
        # observables it touched downstream may go (signature.py: the bucket is the root's shape).
        root = root_kind(again.differences, again.kernel, again.model, job.case)
        small, mstats = minimize(job.case, self._same(job.kinds, root), max_seconds=0.0 if self.stop() else budget,
                                 admissible=admissible, stop=self.stop)
        final = rerun(small, job.kinds, self.kernel, self.model, root)
        if not final.reproduced:  # minimized into a timing-dependent corner: keep the original
            small, final = job.case, again
        explained = None
        if self.profile is not None:
            explained = explaining_behaviour(small, final.kernel, self.profile)
            if explained is None and small is not job.case:  # the small case may have lost it
                explained = explaining_behaviour(job.case, again.kernel, self.profile)
                if explained is not None:
                    small, final = job.case, again
        kinds = final.kinds or job.kinds
        notes: dict[str, Any] = {
            "seed": job.seed,
            "case index": job.index,
            "original size": size_text(job.case),
            "minimized size": size_text(small),
            "minimizer": f"{mstats.calls} runs, {mstats.seconds:.1f} s"
            + (" (time limit hit)" if mstats.timed_out else ""),
            "independent backend": self.independent.check(small, kinds, final.model)
            if check_independent and not self.stop() else NOT_CHECKED,
        }
        if explained is not None and self.profile is not None:
            notes["explained by"] = sentence(explained, self.profile)
        if final.shadowed:  # oracle.documented: the breach rides along with the difference
            notes["promises the kernel broke too (a documented bug's, the model could not name it)"] = "; ".join(
                f"{b.invariant}: {b.detail}" for b in final.shadowed)
        return Triaged(job, True, case=small, kernel=final.kernel, model=final.model, differences=final.differences,
                       kinds=kinds, notes=notes, seconds=time.monotonic() - t0, explained=explained)

    def _in_zone(self, case: Case) -> bool:
        return zone_violation(case, self.gen) is None

    def _same(self, kinds: Kinds, root: str | None) -> Callable[[Case], bool]:
        def predicate(c: Case) -> bool:
            k = self.kernel.run(c)
            m = self.model(c)
            return shows(judge(c, k, m), k, m, kinds, root, c)

        return predicate
