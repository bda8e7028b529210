"""The verdict on one case: the kernel's promises first, then kernel against model.

Two of the three oracles meet here (the third, the kernel log, arrives as an invariant):
- a kernel outcome that breaks a promise (diffuzz/engine/invariants.py) is a finding whatever
  the model says; its kinds are the broken invariants ("invariant.<name>"), so confirmation,
  minimization and bucketing keep to the same broken promise -- unless the model also differs
  and a documented bug could explain the breach (`documented`): then the difference is the finding;
- otherwise the kinds are the fields where kernel and model differ (diffuzz/engine/compare.py).
Every caller that asks "does this case still show it?" (confirm, minimize, the CLI) asks judge().
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Data, Outcome
from diffuzz.engine.compare import Difference, compare
from diffuzz.engine.invariants import KNOWN_BUGS, Broken, broken, reachable_promises, unexplained
from diffuzz.engine.provenance import sender_streams
from diffuzz.engine.signature import Kinds, diff_kinds

PREFIX = "invariant."


@dataclass(frozen=True)
class Verdict:
    differences: tuple[Difference, ...]  # broken invariants first (kernel detail, no model value), then fields
    kinds: Kinds  # what a re-run or a smaller case must show again; empty when all is well
    kernel_broken: tuple[Broken, ...]
    model_broken: tuple[Broken, ...]  # promises the model breaks with no known bug to explain them
    # The documented kernel bugs (K1, ...) that explain every promise the kernel broke, when the
    # model copied the same breach on purpose and there is no other difference: a known bug met
    # again, counted, not triaged anew.
    known: tuple[str, ...] = ()

    @property
    def shadowed(self) -> tuple[Broken, ...]:
        """The kernel's broken promises when they are not the finding (`documented`): a
        difference is, and the breach goes with it for people to read."""
        return self.kernel_broken if not any(k.startswith(PREFIX) for k in self.kinds) else ()


def judge(case: Case, kernel: Outcome, model: Outcome) -> Verdict:
    # The kernel's promises are checked on its own outcome, with one fact borrowed from the model,
    # as compare.py's mask table does: which delivered bytes are pushed, never-written memory
    # (spec §6.5).  Such bytes often hold a page's earlier data, even another socket's dropped
    # bytes, and would read as sent twice or as sent by someone else.
    # Unless the model says its unknown bytes are a kernel bug's (K4: bytes the kernel reserved and
    # never wrote): borrowing those would hide the very breach the bug is known for.
    masked = kernel if _unknowns_are_a_bug(model) else with_model_unknowns(kernel, model)
    streams = sender_streams(case)
    kb = tuple(b for b in broken(case, masked, streams) if b.invariant != "termination" or not model.hang)
    diffs = tuple(compare(kernel, model))
    if not kb and not diffs and seen_alike(kernel, model):
        return Verdict((), frozenset(), (), ())  # the model breaks what the kernel breaks: nothing
    mb = tuple(unexplained(case, model, streams))
    if kb and not (diffs and documented(case, kb, model)):
        own = tuple(Difference(PREFIX + b.invariant, b.detail, None) for b in kb)
        return Verdict(own + diffs, frozenset(PREFIX + b.invariant for b in kb), kb, mb,
                       () if diffs else known_bugs(kb, model))
    return Verdict(diffs, diff_kinds(diffs), kb, mb)


def seen_alike(kernel: Outcome, model: Outcome) -> bool:
    """Do the promise checks see the same outcome on both sides, when compare() found nothing?
    Then the model's own check (unexplained: half of judge's time) would find what the kernel's
    found.  compare() leaves out notes (the kernel log: the kernel's alone), both sides of a hang,
    and a run's head where either is None; the kernel is masked with the model's unknown bytes
    unless the model names a bug (K4's bytes are not masked, _unknowns_are_a_bug).  So: no hang,
    no named bug, and no model head the kernel lacks."""
    return (not kernel.hang and not model.hang and not model.notes.get("kernel_bugs")
            and all(k.head is not None or m.head is None for k, m in zip(kernel.runs, model.runs, strict=False)))


def documented(case: Case, kernel_broken: tuple[Broken, ...], model: Outcome) -> bool:
    """Could a documented bug explain every promise the kernel broke?  The model names the bug,
    or this case's program can reach bugs that break those promises (KNOWN_BUG_NEEDS).  Where
    the model also differs, the difference is then the finding, not the breach: a model that took
    another path (a model bug, a kernel change on the way there) can no longer name the bug it
    would have copied, and the breach would name the bucket of every such cause alike."""
    promises = {b.invariant for b in kernel_broken}
    return bool(known_bugs(kernel_broken, model)) or promises <= reachable_promises(case)


def _unknowns_are_a_bug(model: Outcome) -> bool:
    return any("byte_provenance" in KNOWN_BUGS.get(bug, ()) for bug in model.notes.get("kernel_bugs", ()))


def with_model_unknowns(out: Outcome, model: Outcome) -> Outcome:
    """out with the model's unknown byte ranges (pushed, never written) on every received byte
    string and every run's recorded window the model has at the same length; everything else
    unchanged."""

    if not any(ep.rx.unknown for ep in model.endpoints.values()) and not any(
            e.data is not None and e.data.unknown for e in model.events) and not any(
            r.head is not None and r.head.unknown for r in model.runs):
        return out  # nothing pushed and unwritten: the common case, no copy

    def masked(data: Data | None, model_data: Data | None) -> Data | None:
        if data is None or model_data is None or not model_data.unknown or len(data) != len(model_data):
            return data
        return Data(data.raw, model_data.unknown)

    events = out.events
    if len(model.events) == len(events):
        events = tuple(replace(e, data=masked(e.data, m.data)) for e, m in zip(events, model.events, strict=True))
    endpoints = {
        name: replace(ep, rx=masked(ep.rx, model.endpoints[name].rx)) if name in model.endpoints else ep
        for name, ep in out.endpoints.items()
    }
    runs = out.runs
    if len(model.runs) == len(runs):
        runs = tuple(replace(r, head=masked(r.head, m.head)) for r, m in zip(runs, model.runs, strict=True))
    return replace(out, events=events, endpoints=endpoints, runs=runs)


def known_bugs(kernel_broken: tuple[Broken, ...], model: Outcome) -> tuple[str, ...]:
    """The bugs the model names (notes["kernel_bugs"]) if they explain every broken promise."""
    named = tuple(sorted(model.notes.get("kernel_bugs", ())))
    explained = {name for bug in named for name in KNOWN_BUGS.get(bug, ())}
    return named if named and {b.invariant for b in kernel_broken} <= explained else ()
