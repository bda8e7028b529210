"""Difference signatures: what makes two findings "the same bug", like a crash title.

Two levels:
- `diff_kinds(differences)`: which fields differ, with indexes and endpoint names folded
  (Difference.kind()).  Confirmation keeps this fixed: a re-run that differs in other fields
  shows something else, not the same bug again.
- `Signature`: the root cause's shape, which names a corpus bucket (corpus/findings/<slug>-<hash>/):
  the kind of the *first* difference (`root_kind`: the broken promise if there is one, else
  where the earliest difference in time shows), the helpers and event kinds of the *minimized*
  case, and the kernel release.  One cause shows in many observables -- a wrong redirect changes
  what two sockets read, their FIONREAD and how their drains end -- and which of those differ
  depends on the case; where the first one shows does not.  The minimizer keeps the cause
  (`same_cause`), not every field, so the observables one cause touches share a bucket.  All
  the kinds stay in bucket.json (`kinds`), for people.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from diffuzz.contract.case import SEND_TYPES, Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import Difference

Kinds = frozenset[str]


def diff_kinds(differences: Iterable[Difference]) -> Kinds:
    return frozenset(d.kind() for d in differences)


_EVENT = re.compile(r"^events\[(\d+)\]")
_RUN = re.compile(r"^runs\[(\d+)\]")
ALONE = ("runs.", "invariant.")  # roots that name a bucket without the case's helpers and events
_STEP = re.compile(r"^runs\[(\d+)\]\.steps\[(\d+)\]")
_LATER = 1 << 30  # after every event: the drain's endpoints


def _task(outcome: Outcome | None, j: int) -> int:
    """The event in which run j of this outcome ran (_LATER when unknown or absent)."""
    if outcome is None or j >= len(outcome.runs):
        return _LATER
    task = outcome.runs[j].ctx.task
    return task if isinstance(task, int) else _LATER


def _when(d: Difference, kernel: Outcome, model: Outcome | None) -> tuple[int, int]:
    """When a difference happened: (event index, 0 for a program run inside it, 1 for its result).
    A run counts at the earlier of the two sides' events for it; a run one side has and the other
    lacks (run_count, runs.length) at the first such run."""
    path = d.path
    if path.startswith("invariant."):
        return (-3, 0)
    if path == "hang":
        return (-2, 0)
    if path.startswith("inserts"):
        return (-1, 0)
    m = _EVENT.match(path)
    if m:
        return (int(m[1]), 1)
    m = _RUN.match(path)
    if m:
        j = int(m[1])
        return (min(_task(kernel, j), _task(model, j)), 0)
    if path in ("run_count", "runs.length"):
        shorter = min(len(kernel.runs), len(model.runs)) if model is not None else len(kernel.runs)
        return (min(_task(kernel, shorter), _task(model, shorter)), 0)
    return (_LATER, 1)


def _root_name(kind: str) -> str:
    """The part of the first difference that names a cause: where it shows -- the program's runs
    ("runs"), an event's result ("events"), the drain ("endpoints"), the set-up ("inserts") -- or
    the promise broken.  Which field of those shows first (a run's ep or verdict, a send's return or
    its SIGPIPE, a socket's bytes or its FIONREAD) follows from the case, not from the cause."""
    if kind.startswith("invariant.") or kind == "hang":
        return kind
    if kind == "run_count":
        return "runs"
    return kind.split(".", 1)[0].split("[", 1)[0]


_DOWNSTREAM = {"inserts": 0, "runs": 1, "events": 2, "endpoints": 3}  # where a difference shows, in time


def same_cause(root: str, got: str) -> bool:
    """Does a case whose first difference is `got` still show the cause of a finding whose first
    difference was `root`?  The same broken promise, or the same helper's result (`runs.<op>`); or
    the same place or a later one: a run's difference shows next in the send's return, then at the
    drain, once the observables in between are gone (what the minimizer may take away)."""
    if root.startswith("runs."):
        return got == root  # the helper that answered differently is the cause: it must stay
    if root in _DOWNSTREAM and got.split(".", 1)[0] in _DOWNSTREAM:
        got = got.split(".", 1)[0]
        return _DOWNSTREAM[got] >= _DOWNSTREAM[root]
    return got == root


def root_kind(differences: Sequence[Difference], kernel: Outcome, model: Outcome | None = None,
              case: Case | None = None) -> str:
    """The kind of the first difference: a broken promise (the judge lists those first), else the
    earliest in time (a run inside a send before that send's return, every event before the
    drain); field order breaks ties.  With the case, a first difference in a helper step's result
    is `runs.<op>` (runs.pop_data): the helper that answered differently, whatever else the case
    holds, names the cause."""
    if not differences:
        return "none"
    order = sorted(range(len(differences)), key=lambda i: (_when(differences[i], kernel, model), i))
    first = differences[order[0]]
    m = _STEP.match(first.path) if case is not None else None
    if m and not first.path.startswith("invariant."):
        steps = case.invocation(int(m[1])).steps if case is not None else ()
        if int(m[2]) < len(steps):
            return f"runs.{steps[int(m[2])].op}"
    return _root_name(first.kind())


def case_features(case: Case) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(helper step ops, event ops) that the case uses, each sorted and unique; every send kind
    (sendmsg, sendfile, splice) counts as "send": the minimizer keeps one where turning it into
    a plain send changes the first difference's details, not its cause."""
    helpers = sorted({s.op for inv in case.program for s in inv.steps})
    events = sorted({"send" if isinstance(e, SEND_TYPES) else e.op for e in case.events})
    return tuple(helpers), tuple(events)


@dataclass(frozen=True)
class Signature:
    root: str  # root_kind: what names the bucket, with the helpers, events and release
    helpers: tuple[str, ...]
    events: tuple[str, ...]
    release: str
    kinds: tuple[str, ...] = field(default=(), compare=False)  # every differing kind, for people

    @classmethod
    def of(cls, kinds: Kinds, case: Case, release: str, root: str | None = None) -> Signature:
        """A helper's result as the root (`runs.<op>`), or a broken promise (`invariant.<name>`), names
        the bucket alone, with the release: the other helpers and events of the case are the setting
        it showed in.  (A promise broken in many shapes is one bucket; two new kernel bugs that
        break the same promise share it.  A breach a documented bug may explain, where the model
        also differs, is not a root at all: oracle.documented.)"""
        helpers, events = ((), ()) if root and root.startswith(ALONE) else case_features(case)
        ordered = tuple(sorted(kinds))
        return cls(root or (ordered[0] if ordered else "none"), helpers, events, release, ordered)

    def to_dict(self) -> dict[str, object]:
        return {"root": self.root, "kinds": list(self.kinds), "helpers": list(self.helpers),
                "events": list(self.events), "release": self.release}

    def digest(self) -> str:
        text = json.dumps({"root": self.root, "helpers": list(self.helpers), "events": list(self.events),
                           "release": self.release}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def slug(self) -> str:
        """A readable, filesystem-safe prefix: the root kind and the helpers."""
        first = self.root
        # A root that names its cause alone (a helper's result, a profile behaviour) has no helpers.
        alone = first.startswith((*ALONE, "profile."))
        words = [first, *self.helpers] if self.helpers or alone else [first, "no_helpers"]
        clean = (re.sub(r"[^A-Za-z0-9_.]+", "_", w.replace("[*]", "").replace(".*.", ".")).strip("_.") for w in words)
        return "-".join(clean)[:60]

    def bucket(self) -> str:
        """The bucket directory name: corpus/findings/<slug>-<hash>."""
        return f"{self.slug()}-{self.digest()}"
