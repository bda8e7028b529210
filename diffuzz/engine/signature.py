"""Difference signatures: what makes two findings "the same bug", like a crash title.

Two levels:
- `diff_kinds(differences)`: which fields differ, with indexes and endpoint names folded
  (Difference.kind()).  Confirmation and the minimizer keep this fixed: a candidate that
  differs in other fields shows another bug, not a smaller copy of this one.
- `Signature`: the kinds, plus which helpers and event kinds the *minimized* case involves, plus
  the kernel release.  This names a corpus bucket: corpus/findings/<slug>-<hash>/.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from diffuzz.contract.case import Case
from diffuzz.engine.compare import Difference

Kinds = frozenset[str]


def diff_kinds(differences: Iterable[Difference]) -> Kinds:
    return frozenset(d.kind() for d in differences)


def case_features(case: Case) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(helper step ops, event ops) that the case uses, each sorted and unique."""
    helpers = sorted({s.op for inv in case.program for s in inv.steps})
    events = sorted({e.op for e in case.events})
    return tuple(helpers), tuple(events)


@dataclass(frozen=True)
class Signature:
    kinds: tuple[str, ...]
    helpers: tuple[str, ...]
    events: tuple[str, ...]
    release: str

    @classmethod
    def of(cls, kinds: Kinds, case: Case, release: str) -> Signature:
        helpers, events = case_features(case)
        return cls(tuple(sorted(kinds)), helpers, events, release)

    def to_dict(self) -> dict[str, object]:
        return {"kinds": list(self.kinds), "helpers": list(self.helpers), "events": list(self.events),
                "release": self.release}

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def slug(self) -> str:
        """A readable, filesystem-safe prefix: the first differing field and the helpers."""
        first = self.kinds[0] if self.kinds else "none"
        words = [first, *self.helpers] if self.helpers else [first, "no_helpers"]
        clean = (re.sub(r"[^A-Za-z0-9_.]+", "_", w.replace("[*]", "").replace(".*.", ".")).strip("_.") for w in words)
        return "-".join(clean)[:60]

    def bucket(self) -> str:
        """The bucket directory name: corpus/findings/<slug>-<hash>."""
        return f"{self.slug()}-{self.digest()}"
