"""Confirmation: a mismatch counts only if it happens again, and not because of our own backend.

1. Re-run: the case runs again on fresh sockets (every kernel run builds its own pairs and map,
   docs/execution.md) and on the model.  If the difference signature is not the same, the
   mismatch depended on timing or state we do not control: it is counted as flaky and not saved.
2. Independent backend: a reproduced case (normally the minimized one) runs on the bcc backend
   (per-case C, compiled by bcc: no shared code with the interpreter program), so a finding is
   never caused by the interpreter itself.  If bcc cannot run here the finding says so and is
   saved anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import Difference
from diffuzz.engine.invariants import Broken
from diffuzz.engine.oracle import Verdict, judge
from diffuzz.engine.signature import Kinds, root_kind, same_cause


class Runner(Protocol):
    def run(self, case: Case) -> Outcome: ...


@dataclass(frozen=True)
class Rerun:
    reproduced: bool
    kernel: Outcome
    model: Outcome
    differences: tuple[Difference, ...]
    kinds: Kinds = frozenset()  # the verdict's kinds on this run
    shadowed: tuple[Broken, ...] = ()  # the verdict's: promises broken beside the difference (oracle.documented)


def shows(verdict: Verdict, kernel: Outcome, model: Outcome, kinds: Kinds, root: str | None = None,
          case: Case | None = None, broken: frozenset[str] = frozenset()) -> bool:
    """Does this verdict show the finding?  With `root` (signature.root_kind), when its first
    difference still shows the same cause (signature.same_cause: what the minimizer keeps, not
    every observable the cause touched); without, when its kinds are exactly `kinds` (what
    confirmation asks), or, for a finding whose kernel also broke promises (`broken`, ridden along
    with the difference: oracle.documented), when they ride along a difference again: a breach did
    not need the same incidental differences to confirm before it rode along."""
    if "error" in kernel.notes:  # a failed kernel run (kernel_runner.pool.is_error) observed nothing
        return False
    if verdict.known:  # a documented kernel bug and nothing else: not the unexplained finding asked about
        return False
    if root is None:
        return verdict.kinds == kinds or (bool(broken) and {b.invariant for b in verdict.shadowed} == broken)
    return bool(verdict.kinds) and same_cause(root, root_kind(verdict.differences, kernel, model, case))


def rerun(case: Case, kinds: Kinds, kernel: Runner, model: Callable[[Case], Outcome],
          root: str | None = None, broken: frozenset[str] = frozenset()) -> Rerun:
    """The case again: reproduced when the verdict (diffuzz/engine/oracle.py: the broken
    invariants, else the differing fields) shows the same thing (`shows`)."""
    k = kernel.run(case)
    m = model(case)
    v = judge(case, k, m)
    return Rerun(shows(v, k, m, kinds, root, case, broken), k, m, v.differences, v.kinds, v.shadowed)


class Independent:
    """The independent backend, opened on first use and kept for the run.

    `factory` builds the runner (normally KernelPool(jobs=1, backend="bcc", ...)); any failure to
    build or run it makes the backend "unavailable" with the reason, once, for the whole run.
    """

    def __init__(self, factory: Callable[[], Any] | None, why_not: str = "no independent backend configured") -> None:
        self.factory = factory
        self.runner: Any = None
        self.unavailable: str | None = None if factory else why_not

    def check(self, case: Case, kinds: Kinds, model_outcome: Outcome) -> str:
        """A sentence for the finding: what the independent backend saw on this case."""
        if self.unavailable:
            return f"unavailable: {self.unavailable}"
        try:
            if self.runner is None:
                self.runner = self.factory()  # type: ignore[misc]
            k = self.runner.run(case)
            if "error" in k.notes:
                raise RuntimeError(str(k.notes["error"]))
        except Exception as e:  # bcc missing, headers missing, compile error: say which
            self.unavailable = f"{type(e).__name__}: {e}".strip()
            self.close()
            return f"unavailable: {self.unavailable}"
        got = judge(case, k, model_outcome).kinds
        if got == kinds:
            return "bcc backend shows the same difference (confirmed)"
        if not got:
            return "bcc backend AGREES with the model: suspect the interpreter backend, not the kernel"
        return f"bcc backend differs from the model in other fields: {', '.join(sorted(got))}"

    def close(self) -> None:
        runner, self.runner = self.runner, None
        close = getattr(runner, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass
