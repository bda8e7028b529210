"""The differential fuzz loop: generate, run on both sides, compare, hand mismatches to triage, save.

Pipelining: cases go to the kernel pool in batches through `pool.imap(batch)` (its workers run
them in their own processes, in order), while the main process runs the model on the same
cases; the model for case i overlaps the kernel work on the cases after it.

Triage (confirm, minimize, the bcc check: triage.py) runs beside the loop in the triage process
(triage_process.py, with its own kernel worker) when the engine is given `triage_kernel`, and
inline otherwise (the atheris engine's step, `diffuzz triage`).  Only the first mismatch of a
(differing fields, helpers, events) key is triaged; the others only count on its bucket, also
while it is still being triaged.  At the end, pending triage gets TRIAGE_GRACE seconds (none
after a stop signal); what is left is kept under unconfirmed/ for `diffuzz triage WORKDIR`.

Campaign (diffuzz/engine/campaign.py), when one is given: case i of the stream is `source(i)` with i
from `campaign.next_seed()`, so a resumed campaign continues the stream; every case counts an exec and
adds its features (features.py, on the model outcome) to its coverage; findings go through record_*.

Faults the loop survives (tests/faults/):
- a kernel worker that dies mid-case (error outcome): the case is re-run once on a fresh worker
  after the batch, and saved under kernel-errors/ only if it fails again;
- a kernel hang or a VM's guest crash (the pool replaces the worker): a finding saved under hangs/ or
  crashes/ (with the guest's console), never re-run or minimized (each run costs a deadline or a boot);
- a difference that does not reproduce: flaky, not a finding, kept under flaky/ with both runs' differences;
- a triage process that dies: what it held goes to unconfirmed/, and the loop triages inline from
  then on; killed or signalled, it ends the campaign, as a signal to a kernel worker does;
- a finding that cannot be saved (ENOSPC, any OSError): reported once, kept in memory and retried at
  every tick (every TICK cases); what is still unsaved at the end is printed as case JSON on stderr.
"""

from __future__ import annotations

import platform
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.confirm import Independent
from diffuzz.engine.corpus import Corpus, Finding, write_atomic
from diffuzz.engine.features import features
from diffuzz.engine.fuzz_config import FuzzConfig, FuzzStats
from diffuzz.engine.generate import random_case
from diffuzz.engine.oracle import Verdict, judge
from diffuzz.engine.saving import FindingStore
from diffuzz.engine.signature import Signature, root_kind
from diffuzz.engine.triage import Mismatch, Triage, Triaged
from diffuzz.engine.triage_process import TriageProcess
from sim.profile import Profile

Model = Callable[[Case], Outcome]
Source = Callable[[int], Case]  # case index -> case
TICK = 8  # cases between ticks: status line, campaign flush (itself rate-limited), unsaved findings
TRIAGE_GRACE = 10.0  # seconds pending triage may go on after --duration or --cases
# Handled after a batch: failed kernel runs (case, outcome, index), re-run; and mismatches to
# triage inline (no triage process), both on the pool.
_Lost = tuple[Case, Outcome, int]


class Engine(FindingStore):
    def __init__(self, config: FuzzConfig, kernel: Any, model: Model, corpus: Corpus,
                 independent: Independent | None = None,
                 on_event: Callable[[str, FuzzStats], None] | None = None, campaign: Any = None,
                 source: Source | None = None, triage_kernel: Callable[[], Any] | None = None,
                 profile: Profile | None = None) -> None:
        """`campaign`: a diffuzz.engine.campaign.Campaign (or None for a run without state);
        `source`: case index -> case (default: random_case of the config's seed and generator);
        `triage_kernel`: builds the triage process's own kernel runner (None: triage inline);
        `profile`: the model's kernel profile, for triage to ask whether a finding is one of its
        behaviours switched (explain.py)."""
        self.cfg = config
        self.kernel = kernel
        self.model = model
        self.corpus = corpus
        self.independent = independent or Independent(None)
        self.on_event = on_event or (lambda what, stats: None)
        self.campaign = campaign
        self.source: Source = source or (lambda i: random_case(self.cfg.seed, i, self.cfg.gen))
        self.stats = FuzzStats()
        if campaign is not None:
            campaign.stream_seed(config.seed, config.seed)  # recorded, so a resume can keep the stream
            self.stats.cases_before = campaign.execs
            self.stats.elapsed_before = campaign.elapsed()
            self.stats.coverage = campaign.feature_coverage
            self.stats.sessions = campaign.sessions
        self._features: set[int] = set()  # without a campaign
        self._index = 0  # the next case index without a campaign
        self._flaky_kept: int | None = None  # cases in flaky/ (counted on first use)
        self._unsaved: list[Finding] = []  # not yet on disk
        self._hits: Counter[str] = Counter()
        self._examples: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.stop = False
        self._known: dict[int, str] = {}  # key (Mismatch.key) of each mismatch triaged in this run -> its bucket
        self._waiting: dict[int, int] = {}  # keys in triage -> how many more came meanwhile
        self.profile = profile
        self._inline = Triage(kernel, model, self.independent, config.gen, self._stop_asked, profile)
        self._told: set[str] = set()  # behaviours already said to explain findings
        self.triage_kernel = triage_kernel
        self.triage: TriageProcess | None = None

    # ---- the loop -------------------------------------------------------------------------

    def _time_up(self) -> bool:
        """A stop was asked for, or --duration has passed."""
        return self._stop_asked() or (self.cfg.duration is not None and self.stats.elapsed() >= self.cfg.duration)

    def _stop_asked(self) -> bool:
        """A signal to the engine (self.stop), or to one of the kernel workers: any signal to any
        process of a campaign ends it cleanly (kernel_runner/pool.py stop_request)."""
        if not self.stop:
            for runner in (self.kernel, self.independent.runner, self.triage):
                why = getattr(runner, "stop_request", None)
                if why:
                    self.stop = True
                    print(f"diffuzz: {why}: stopping the campaign", file=sys.stderr, flush=True)
                    self._event("problem", about="stop", message=str(why))
                    break
        return self.stop

    def _done(self) -> bool:
        return self._time_up() or (self.cfg.cases is not None and self.stats.cases >= self.cfg.cases)

    def run(self) -> FuzzStats:
        if self.triage_kernel is not None:
            self.triage = TriageProcess(self.triage_kernel, self.model, self.independent, self.cfg.gen,
                                        self.cfg.minimize_seconds, self.profile)
        try:
            while not self._done():
                n = self.cfg.batch
                if self.cfg.cases is not None:
                    n = min(n, self.cfg.cases - self.stats.cases)
                self._batch(n)
                self._tick()
        finally:
            self._end_triage()
        self._save_unsaved()
        self._write_hits(now=True)
        return self.stats

    def _end_triage(self) -> None:
        """Pending triage gets TRIAGE_GRACE seconds (none after a stop); the rest is unconfirmed."""
        triage, self.triage = self.triage, None
        if triage is None:
            return
        self.stats.triage_pending = triage.pending()
        self.on_event("tick", self.stats)
        done, left = triage.finish(0.0 if self._stop_asked() else TRIAGE_GRACE)
        for r in done:
            self._triaged(r)
        for job in left:
            self._unconfirmed(job, f"the triage process ended: {triage.dead}" if triage.dead
                              else "the run ended before triage reached it", self._waiting.pop(job.key, 0))
        self.stats.triage_pending = 0

    def _next_index(self) -> int:
        if self.campaign is not None:
            return int(self.campaign.next_seed())
        i = self._index
        self._index += 1
        return i

    def _tick(self) -> None:
        if self.triage is not None:
            for r in self.triage.poll():
                self._triaged(r)
            if self.triage.dead:
                for job in self.triage.take_held():
                    self._unconfirmed(job, f"the triage process ended: {self.triage.dead}",
                                      self._waiting.pop(job.key, 0))
            self.stats.triage_pending = self.triage.pending()
        if self._unsaved:
            self._save_unsaved()
        self._write_hits()
        if self.campaign is not None:
            self.campaign.maybe_flush()
        self.on_event("tick", self.stats)

    def _batch(self, n: int) -> None:
        # Cases are generated lazily, as the pool asks for them, so generation overlaps the
        # workers too; `pending` holds the generated cases whose outcomes have not come back.
        pending: deque[tuple[int, Case]] = deque()

        def feed() -> Iterator[Case]:
            for _ in range(n):
                i = self._next_index()
                case = self.source(i)
                pending.append((i, case))
                yield case

        # Failed kernel runs, and mismatches to triage inline, wait until the batch's imap is
        # finished: re-running, confirming and minimizing use pool.run, which inside an open imap
        # would queue behind the batch's cases in flight.  (The triage process has its own worker:
        # what goes to it goes at once.)
        lost: list[_Lost] = []
        inline: list[Mismatch] = []
        outcomes = self.kernel.imap(feed())
        try:
            for k in outcomes:
                i, case = pending.popleft()
                if _is_error(k):
                    lost.append((case, k, i))  # counted when it is re-run
                else:
                    self._one(case, k, i, inline)
                if self._time_up():
                    break
                if self.stats.cases % TICK == 0:
                    self._tick()
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()  # a stopped batch: the pool finishes what is in flight and forgets it
        for job in inline:
            self._triaged(self._inline.run(job, self._budget(), check_independent=not self._time_up()))
        for case, k, i in lost:
            retried = self._retry_lost(case, k, i)
            if retried is not None:
                self._one(case, retried, i, None)

    def _one(self, case: Case, k: Outcome, index: int, inline: list[Mismatch] | None) -> Outcome | None:
        """One kernel outcome against the model; returns the model outcome.  A mismatch to triage
        inline goes to `inline` (or is triaged now when there is no batch in flight)."""
        m = self._model(case, index)
        self._count(case, m)
        if m is None:
            return None
        if (k.hang and not m.hang) or "crash" in k.notes:  # a guest that died is a finding, whatever the model says
            self._hang(case, k, index)
            return m
        v = judge(case, k, m)
        if v.model_broken:
            self._model_broken(case, index, v)
        if v.kinds:
            self._mismatch(case, k, m, v, index, inline)
        return m

    def _retry_lost(self, case: Case, failed: Outcome, i: int) -> Outcome | None:
        """The worker died or failed on this case: run it once more (a fresh worker).  None,
        with the case counted and saved as a kernel error, when it fails again."""
        self.stats.retried += 1
        self._event("worker_lost", case_index=i, error=str(failed.notes.get("error")))
        k = self.kernel.run(case)
        if _is_error(k):
            self._count(case, None)
            self._kernel_error(case, k, i)
            return None
        return k

    def one_case(self, case: Case) -> Outcome | None:
        """Run one case through the whole path (kernel, model, features, confirm, minimize,
        save) outside the batch loop: the atheris engine's step.  Returns the model outcome."""
        i = self._next_index()
        k = self.kernel.run(case)
        if _is_error(k):
            retried = self._retry_lost(case, k, i)
            if retried is None:
                return None
            k = retried
        m = self._one(case, k, i, None)
        if self.stats.cases % TICK == 0:
            self._tick()
        return m

    def retriage(self, case: Case, index: int) -> str:
        """A case kept under unconfirmed/, again (`diffuzz triage WORKDIR`): run on both sides and,
        when it still differs, triaged inline and saved.  What became of it, in a few words."""
        st = self.stats
        before = (st.findings, st.flaky, st.known, st.hangs, st.model_errors, len(st.new_buckets))
        k = self.kernel.run(case)
        if _is_error(k):
            retried = self._retry_lost(case, k, index)
            if retried is None:
                return "the kernel side failed on it twice (kernel-errors/)"
            k = retried
        self._one(case, k, index, None)
        self._write_hits(now=True)
        findings, flaky, known, hangs, model_errors, new = (
            a - b for a, b in zip((st.findings, st.flaky, st.known, st.hangs, st.model_errors, len(st.new_buckets)),
                                  before, strict=True))
        if findings:
            return f"a finding, in new bucket {st.new_buckets[-1]}" if new else "a finding, in a known bucket"
        return ("flaky: the re-run agreed (flaky/)" if flaky else "a documented kernel bug" if known
                else "a hang or crash (hangs/, crashes/)" if hangs else "a model bug (model-errors/)" if model_errors
                else "kernel and model agree on it now")

    def done(self) -> bool:
        return self._done()

    def finish(self) -> None:
        """Last attempt at saving what a full disk refused."""
        self._save_unsaved()
        self._write_hits(now=True)

    def _count(self, case: Case, m: Outcome | None) -> None:
        st = self.stats
        st.cases += 1
        fs = features(case, m) if m is not None else frozenset()
        if self.campaign is not None:
            self.campaign.record_execs(1)
            if fs:
                self.campaign.add_features(fs)
            st.coverage = self.campaign.feature_coverage
        else:
            self._features.update(fs)
            st.coverage = len(self._features)

    def _event(self, kind: str, **fields: Any) -> None:
        if self.campaign is not None:
            self.campaign.event(kind, **fields)

    def _model(self, case: Case, index: int) -> Outcome | None:
        try:
            return self.model(case)
        except Exception as e:
            # The model must take every generated case; a crash is a bug to fix, kept as a file.
            self.stats.model_errors += 1
            d = self.corpus.root / "model-errors"
            d.mkdir(parents=True, exist_ok=True)
            write_atomic(d / f"seed{self.cfg.seed}-case{index}.json", case.to_json() + "\n")
            write_atomic(d / f"seed{self.cfg.seed}-case{index}.txt", f"{type(e).__name__}: {e}\n")
            return None

    # ---- a mismatch -------------------------------------------------------------------------

    def _mismatch(self, case: Case, k: Outcome, m: Outcome, verdict: Verdict, index: int,
                  inline: list[Mismatch] | None = None) -> None:
        """A difference, or a broken promise of the kernel (verdict.kinds): triage its key's first
        one (triage.py), count the others on its bucket.  Inline triage waits in `inline` when
        given (a batch in flight)."""
        if verdict.known:
            self._known_bug(case, k, m, verdict, index)
            return
        self.stats.mismatches += 1
        job = Mismatch(self.cfg.seed, index, case, verdict.kinds, tuple(verdict.differences),
                       root_kind(verdict.differences, k, m, case), frozenset(b.invariant for b in verdict.shadowed))
        key = job.key
        if key in self._known:
            self.stats.findings += 1
            self._hit(self._known[key])
            self.on_event("finding", self.stats)
        elif key in self._waiting:
            self._waiting[key] += 1  # a key already being triaged only counts
        elif self.triage is None or self.triage.dead:  # no triage process, or it failed: inline
            if inline is not None:
                inline.append(job)
                self._waiting[key] = 0  # the same key in this batch only counts
            else:
                self._triaged(self._inline.run(job, self._budget(), check_independent=not self._time_up()))
        elif not self.triage.has_room(job.root):
            self.stats.triage_skipped += 1  # its root kind is queued: it only counts, and may come again
        else:
            why = self.triage.submit(job)
            if why is None:
                self._waiting[key] = 0
            else:
                self._unconfirmed(job, why)

    def _budget(self) -> float:
        """Seconds to minimize inline: none after a stop (saved unminimized, quickly), and
        never past --duration."""
        budget = 0.0 if self.stop else self.cfg.minimize_seconds
        if self.cfg.duration is not None:
            budget = max(0.0, min(budget, self.cfg.duration - self.stats.elapsed()))
        return budget

    def _triaged(self, r: Triaged) -> None:
        """Save what triage made of a mismatch, and the hits its key had meanwhile."""
        st, job = self.stats, r.job
        more = self._waiting.pop(job.key, 0)
        if not r.reproduced:
            st.flaky += 1
            # The key's others were only counted, never re-run: not flaky, not findings.  The key
            # is not remembered, so the next one of it is triaged afresh.
            st.triage_skipped += more
            path = self._keep_flaky(job.case, job.index, list(job.differences), r.again)
            if self.campaign is not None:
                self.campaign.record_flaky(case_index=job.index, fields=sorted(job.kinds), saved=path,
                                           **({"same key meanwhile": more} if more else {}))
            self.on_event("flaky", st)
            return
        assert r.case is not None and r.kernel is not None and r.model is not None
        st.findings += 1
        st.minimize_seconds += r.seconds
        bucket = self._record(r.case, r.kernel, r.model, r.differences, r.kinds, r.notes, r.explained)
        if r.explained and r.explained not in self._told:
            self._told.add(r.explained)
            print(f"diffuzz: findings in {bucket}: {r.notes['explained by']}", file=sys.stderr, flush=True)
        self._known[job.key] = sys.intern(bucket)  # one string per bucket, however many keys
        st.unique.add(bucket)
        if more:
            st.findings += more
            self._hit(bucket, more)
        self.on_event("finding", st)

    def _known_bug(self, case: Case, k: Outcome, m: Outcome, verdict: Verdict, index: int) -> None:
        """A documented kernel bug met again (the model copies it and names it): one bucket per bug,
        counted, its first case kept as found; no re-run or minimizing (corpus/kernel-bugs/ has the
        minimized case)."""
        st = self.stats
        st.known += 1
        release = str(k.notes.get("kernel") or platform.release())
        known = tuple(f"known.{b}" for b in verdict.known)
        sig = Signature("+".join(known), (), (), release, known)
        if sig.bucket() in self._examples:
            self._hit(sig.bucket())  # met before in this run: counted, written with the other hits
        else:
            st.unique.add(self._store(Finding(case, k, m, verdict.differences, sig,
                                              {"seed": self.cfg.seed, "case index": index,
                                               "known kernel bug": ", ".join(verdict.known)})))
        self.on_event("finding", st)


def _is_error(outcome: Outcome) -> bool:
    """kernel_runner.pool.is_error, without importing the kernel side into the engine."""
    return "error" in outcome.notes
