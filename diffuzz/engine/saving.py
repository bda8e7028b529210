"""Saving findings so that none is lost: a full disk keeps them in memory and retries.

A part of diffuzz.engine.loop.Engine (its base class), kept apart because it is one concern:
a finding goes to the corpus (diffuzz/engine/corpus.py), its bucket is counted on the campaign,
and an OSError (ENOSPC, a vanished directory) never drops it: it waits in `_unsaved`, is retried
at every tick, and what is still unsaved at the end is printed as case JSON by the CLI.

Hits: a mismatch of a key already triaged (or being triaged) only counts on its bucket; the
counts are written together, at most every HIT_FLUSH seconds (each write is two fsyncs), and
at the end.
"""

from __future__ import annotations

import platform
import sys
import time
from collections import Counter
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import Difference
from diffuzz.engine.corpus import Corpus, Finding, Recorded, format_diff, profiles_of, write_atomic
from diffuzz.engine.explain import PREFIX
from diffuzz.engine.oracle import Verdict
from diffuzz.engine.signature import Kinds, Signature, root_kind
from diffuzz.engine.triage import Mismatch

HIT_FLUSH = 1.0  # seconds between writes of the counted hits
# Flaky cases kept per work directory; past it only the flaky event is written.  The highest rate
# seen was 53 in 886,117 cases (a runner bug since fixed, kernel-notes N11; 0 in 232,276 after),
# so a day-long campaign stays well under it unless something real keeps coming and going.
FLAKY_KEPT = 1000


class FindingStore:
    """Expects, from the Engine: corpus, stats (FuzzStats), campaign (or None), _event(), and
    _unsaved: list[Finding] (findings not yet on disk); sets up its own hit counts."""

    corpus: Corpus
    stats: Any
    campaign: Any
    _unsaved: list[Finding]
    _hits: Counter[str]  # bucket -> occurrences not yet written
    _examples: dict[str, tuple[str, tuple[str, ...]]]  # bucket -> (release, model profiles) its hits are counted with
    _hits_written = 0.0
    _flaky_kept: int | None  # cases in flaky/ (counted on first use)
    cfg: Any  # the Engine's FuzzConfig (its seed names kept cases)
    on_event: Any  # the Engine's status callback

    def _event(self, kind: str, **fields: Any) -> None:  # the Engine's
        raise NotImplementedError

    def _record(self, case: Case, k: Outcome, m: Outcome, diffs: tuple[Difference, ...], kinds: Kinds,
                notes: dict[str, Any], explained: str | None = None) -> str:
        """Save a finding; one a profile behaviour explains (explain.py) goes to that behaviour's
        one bucket, whatever its fields, helpers and events."""
        release = str(k.notes.get("kernel") or platform.release())
        if explained is not None:
            sig = Signature(PREFIX + explained, (), (), release, tuple(sorted(kinds)))
        else:
            sig = Signature.of(kinds, case, release, root_kind(diffs, k, m, case))
        finding = Finding(case, k, m, diffs, sig, notes)
        return self._store(finding)

    def _store(self, finding: Finding) -> str:
        """Save (or count) a finding; the bucket's name, also when the disk refused it for now."""
        try:
            rec = self.corpus.record(finding)
        except OSError as e:
            # Disk full (or gone): keep the finding and retry at every tick; never lose it silently.
            self._unsaved.append(finding)
            self.stats.unsaved = len(self._unsaved)
            name = finding.signature.bucket()
            print(f"diffuzz: cannot save finding {name} in {self.corpus.findings}: {e.strerror or e}; "
                  f"kept in memory ({len(self._unsaved)} unsaved), retrying", file=sys.stderr, flush=True)
            self._event("problem", about="finding", bucket=name, message=str(e.strerror or e))
            return name
        self._saved(rec)
        self._examples.setdefault(rec.bucket.name, (finding.signature.release, tuple(profiles_of(finding))))
        return rec.bucket.name

    def _saved(self, rec: Recorded) -> None:
        if rec.new:
            self.stats.new_buckets.append(rec.bucket.name)
            self.stats.last_new = time.monotonic()
        if self.campaign is not None:
            self.campaign.record_finding(rec.bucket.name, new=rec.new)

    def _save_unsaved(self) -> None:
        """Retry the findings a full disk refused, oldest first; stop at the first failure."""
        while self._unsaved:
            try:
                rec = self.corpus.record(self._unsaved[0])
            except OSError:
                return
            finding = self._unsaved.pop(0)
            self.stats.unsaved = len(self._unsaved)
            print(f"diffuzz: finding saved after all: {rec.bucket}", file=sys.stderr, flush=True)
            self._saved(rec)
            self._examples.setdefault(rec.bucket.name, (finding.signature.release, tuple(profiles_of(finding))))

    def unsaved_cases(self) -> list[str]:
        """Case JSON of the findings still not on disk (the CLI prints them before exiting)."""
        return [f.case.to_json() for f in self._unsaved]

    # ---- hits on a bucket already triaged ---------------------------------------------------

    def _hit(self, bucket: str, n: int = 1) -> None:
        self.stats.unique.add(bucket)
        self._hits[bucket] += n

    def _write_hits(self, now: bool = False) -> None:
        """Write the counted hits (every HIT_FLUSH seconds, or `now`); a bucket not yet on disk
        (the disk refused it) keeps its count for the next time."""
        if not self._hits or (not now and time.monotonic() - self._hits_written < HIT_FLUSH):
            return
        self._hits_written = time.monotonic()
        for bucket, n in list(self._hits.items()):
            seen = self._examples.get(bucket)
            path = self.corpus.findings / bucket
            if seen is None or not (path / "bucket.json").exists():
                continue
            try:
                self.corpus.hit(path, *seen, n=n)
            except OSError:
                continue
            del self._hits[bucket]
            if self.campaign is not None:
                self.campaign.record_finding(bucket, new=False, count=n)

    # ---- cases that are not findings: flaky, unconfirmed, kernel errors, hangs ----------------

    def _keep(self, folder: str, case: Case, index: int, why: str) -> str | None:
        """Save a case that is not a finding (kernel error, hang, flaky) as folder/seedS-caseI.*."""
        d = self.corpus.root / folder
        name = f"seed{self.cfg.seed}-case{index}"
        try:
            d.mkdir(parents=True, exist_ok=True)
            write_atomic(d / f"{name}.json", case.to_json() + "\n")
            write_atomic(d / f"{name}.txt", why)
        except OSError as e:
            print(f"diffuzz: cannot save {d / name}.json: {e.strerror or e}; the case:\n{case.to_json()}",
                  file=sys.stderr, flush=True)
            return None
        return str(d / f"{name}.json")

    def _keep_flaky(self, case: Case, index: int, first: list[Difference],
                    again: tuple[Difference, ...]) -> str | None:
        """Keep a difference that did not reproduce in flaky/ (at most FLAKY_KEPT of them per
        work directory).  Not a finding, but a difference that comes and goes may be a kernel
        race or a runner that does not wait long enough: a person should be able to look."""
        if self._flaky_kept is None:
            d = self.corpus.root / "flaky"
            self._flaky_kept = sum(1 for _ in d.glob("*.json")) if d.is_dir() else 0
        if self._flaky_kept >= FLAKY_KEPT:
            return None
        self._flaky_kept += 1
        rerun_said = (f"the re-run differed in other fields:\n{format_diff(case, again)}" if again
                      else "the re-run agreed with the model")
        return self._keep("flaky", case, index, f"first run:\n{format_diff(case, first)}\n{rerun_said}\n")

    def _unconfirmed(self, job: Mismatch, why: str, more: int = 0) -> None:
        """A mismatch triage did not take: kept as found, for `diffuzz triage WORKDIR`.  `more`:
        the others of its key that came while it waited, only counted (triage_skipped)."""
        self.stats.unconfirmed += 1
        self.stats.triage_skipped += more
        path = self._keep("unconfirmed", job.case, job.index,
                          f"not triaged: {why}\nkinds: {', '.join(sorted(job.kinds))}\n"
                          f"first run:\n{format_diff(job.case, job.differences)}")
        self._event("unconfirmed", case_index=job.index, fields=sorted(job.kinds), saved=path, why=why)

    def _model_broken(self, case: Case, index: int, verdict: Verdict) -> None:
        """The model broke a promise no known kernel bug explains (invariants.KNOWN_BUGS): a model
        bug, kept under model-errors/ like a model crash."""
        self.stats.model_errors += 1
        text = "".join(f"{b.invariant}: {b.detail}\n" for b in verdict.model_broken)
        path = self._keep("model-errors", case, index, f"the model breaks a promise (a model bug):\n{text}")
        self._event("model_broken", case_index=index, invariants=sorted({b.invariant for b in verdict.model_broken}),
                    saved=path)

    def _kernel_error(self, case: Case, k: Outcome, index: int) -> None:
        # The kernel side observed nothing, twice (worker error or death): not a kernel
        # behaviour, but worth a look, so the case is kept.
        self.stats.kernel_errors += 1
        self._event("kernel_error", case_index=index, error=str(k.notes.get("error")))
        self._keep("kernel-errors", case, index, f"{k.notes.get('error')}\n")

    def _hang(self, case: Case, k: Outcome, index: int) -> None:
        # The pool already killed and replaced the worker (or VM).  Not re-run: each run costs the
        # whole deadline (or a guest's life), and a hang or crash finding is read by a person anyway.
        # A VM's console tail goes with it (kernel_runner/vm/machine.py report()).
        kind = "crash" if "crash" in k.notes else "hang"
        self.stats.hangs += 1
        console = f"\nconsole:\n{k.notes['console']}\n" if k.notes.get("console") else ""
        path = self._keep(f"{kind}es" if kind == "crash" else "hangs", case, index, f"{k.notes.get(kind)}\n{console}")
        if self.campaign is not None:
            self.campaign.record_hang(case_index=index, saved=path, why=str(k.notes.get(kind)), what=kind)
        self.on_event("hang", self.stats)
