"""Saving findings so that none is lost: a full disk keeps them in memory and retries.

A part of diffuzz.engine.loop.Engine (its base class), kept apart because it is one concern:
a finding goes to the corpus (diffuzz/engine/corpus.py), its bucket is counted on the campaign,
and an OSError (ENOSPC, a vanished directory) never drops it: it waits in `_unsaved`, is retried
at every tick, and what is still unsaved at the end is printed as case JSON by the CLI.
"""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import Difference
from diffuzz.engine.corpus import Corpus, Finding, Recorded
from diffuzz.engine.signature import Kinds, Signature, root_kind


class FindingStore:
    """Expects, from the Engine: corpus, stats (FuzzStats), campaign (or None), _event(), and
    _unsaved: list[tuple[Finding, str | None]] (findings not yet on disk, with their bucket hint)."""

    corpus: Corpus
    stats: Any
    campaign: Any
    _unsaved: list[tuple[Finding, str | None]]

    def _event(self, kind: str, **fields: Any) -> None:  # the Engine's
        raise NotImplementedError

    def _record(self, case: Case, k: Outcome, m: Outcome, diffs: tuple[Difference, ...], kinds: Kinds,
                notes: dict[str, Any], bucket_hint: str | None = None) -> str:
        release = str(k.notes.get("kernel") or platform.release())
        sig = Signature.of(kinds, case, release, root_kind(diffs, k, m))
        return self._store(Finding(case, k, m, diffs, sig, notes), bucket_hint)

    def _store(self, finding: Finding, bucket_hint: str | None) -> str:
        """Save (or count) a finding; the bucket's name, also when the disk refused it for now."""
        sig = finding.signature
        try:
            rec = self._save(finding, bucket_hint)
        except OSError as e:
            # Disk full (or gone): keep the finding and retry at every tick; never lose it silently.
            self._unsaved.append((finding, bucket_hint))
            self.stats.unsaved = len(self._unsaved)
            name = bucket_hint or sig.bucket()
            print(f"diffuzz: cannot save finding {name} in {self.corpus.findings}: {e.strerror or e}; "
                  f"kept in memory ({len(self._unsaved)} unsaved), retrying", file=sys.stderr, flush=True)
            self._event("problem", about="finding", bucket=name, message=str(e.strerror or e))
            return name
        self._saved(rec)
        return rec.bucket.name

    def _save(self, finding: Finding, bucket_hint: str | None) -> Recorded:
        if bucket_hint is not None and finding.signature.bucket() != bucket_hint:
            # The unminimized case names another bucket; count it on the one it minimized to.
            hinted = self.corpus.findings / bucket_hint
            if (hinted / "bucket.json").exists():
                return self.corpus.hit(hinted, finding)
        return self.corpus.record(finding)

    def _saved(self, rec: Recorded) -> None:
        if rec.new:
            self.stats.new_buckets.append(rec.bucket.name)
            self.stats.last_new = time.monotonic()
        if self.campaign is not None:
            self.campaign.record_finding(rec.bucket.name, new=rec.new)

    def _save_unsaved(self) -> None:
        """Retry the findings a full disk refused, oldest first; stop at the first failure."""
        while self._unsaved:
            finding, hint = self._unsaved[0]
            try:
                rec = self._save(finding, hint)
            except OSError:
                return
            self._unsaved.pop(0)
            self.stats.unsaved = len(self._unsaved)
            print(f"diffuzz: finding saved after all: {rec.bucket}", file=sys.stderr, flush=True)
            self._saved(rec)

    def unsaved_cases(self) -> list[str]:
        """Case JSON of the findings still not on disk (the CLI prints them before exiting)."""
        return [f.case.to_json() for f, _ in self._unsaved]
