"""The differential fuzz loop: generate, run on both sides, compare, confirm, minimize, save.

Pipelining: cases go to the kernel pool in batches through `pool.imap(batch)` (its workers run
them in their own processes, in order), while the main process runs the model on the same
cases; the model for case i overlaps the kernel work on the cases after it (a mismatch stops it
while it is confirmed and minimized).

Dedup before the expensive part: a mismatch whose (differing fields, helpers, events) were already
minimized in this run is re-run once (flaky ones still do not count), then counted on its bucket.

Campaign (diffuzz/engine/campaign.py), when one is given: case i of the stream is `source(i)` with i
from `campaign.next_seed()`, so a resumed campaign continues the stream; every case counts an exec and
adds its features (features.py, on the model outcome) to its coverage; findings go through record_*.

Faults the loop survives (tests/faults/):
- a kernel worker that dies mid-case (error outcome): the case is re-run once on a fresh worker
  after the batch, and saved under kernel-errors/ only if it fails again;
- a kernel hang or a VM's guest crash (the pool replaces the worker): a finding saved under hangs/ or
  crashes/ (with the guest's console), never re-run or minimized (each run costs a deadline or a boot);
- a difference that does not reproduce: flaky, not a finding, kept under flaky/ with both runs' differences;
- a finding that cannot be saved (ENOSPC, any OSError): reported once, kept in memory and retried at
  every tick (every TICK cases); what is still unsaved at the end is printed as case JSON on stderr.
"""

from __future__ import annotations

import platform
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import Difference
from diffuzz.engine.confirm import Independent, rerun, shows
from diffuzz.engine.corpus import Corpus, Finding, format_diff, write_atomic
from diffuzz.engine.features import features
from diffuzz.engine.fuzz_config import FuzzConfig, FuzzStats
from diffuzz.engine.generate import random_case
from diffuzz.engine.minimize import complexity, minimize
from diffuzz.engine.oracle import Verdict, judge
from diffuzz.engine.saving import FindingStore
from diffuzz.engine.signature import Kinds, Signature, case_features, root_kind
from diffuzz.engine.zone import zone_violation

Model = Callable[[Case], Outcome]
Source = Callable[[int], Case]  # case index -> case
TICK = 8  # cases between ticks: status line, campaign flush (itself rate-limited), unsaved findings
# Flaky cases kept per work directory; past it only the flaky event is written.  The highest rate
# seen was 53 in 886,117 cases (a runner bug since fixed, kernel-notes N11; 0 in 232,276 after),
# so a day-long campaign stays well under it unless something real keeps coming and going.
FLAKY_KEPT = 1000
# Handled after a batch: (case, kernel outcome, index, model outcome or None for a failed
# kernel run, the verdict).
_Later = tuple[Case, Outcome, int, Outcome | None, Verdict | None]


class Engine(FindingStore):
    def __init__(self, config: FuzzConfig, kernel: Any, model: Model, corpus: Corpus,
                 independent: Independent | None = None,
                 on_event: Callable[[str, FuzzStats], None] | None = None, campaign: Any = None,
                 source: Source | None = None) -> None:
        """`campaign`: a diffuzz.engine.campaign.Campaign (or None for a run without state);
        `source`: case index -> case (default: random_case of the config's seed and generator)."""
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
        self._unsaved: list[tuple[Finding, str | None]] = []  # (finding, bucket hint) not yet on disk
        self.stop = False
        # (differing fields, helpers, events) of each mismatch minimized in this run -> its bucket
        self._known: dict[tuple[Kinds, tuple[str, ...], tuple[str, ...]], str] = {}

    # ---- the loop -------------------------------------------------------------------------

    def _time_up(self) -> bool:
        """A stop was asked for, or --duration has passed."""
        return self._stop_asked() or (self.cfg.duration is not None and self.stats.elapsed() >= self.cfg.duration)

    def _stop_asked(self) -> bool:
        """A signal to the engine (self.stop), or to one of the kernel workers: any signal to any
        process of a campaign ends it cleanly (kernel_runner/pool.py stop_request)."""
        if not self.stop:
            for runner in (self.kernel, self.independent.runner):
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
        while not self._done():
            n = self.cfg.batch
            if self.cfg.cases is not None:
                n = min(n, self.cfg.cases - self.stats.cases)
            self._batch(n)
            self._tick()
        self._save_unsaved()
        return self.stats

    def _next_index(self) -> int:
        if self.campaign is not None:
            return int(self.campaign.next_seed())
        i = self._index
        self._index += 1
        return i

    def _tick(self) -> None:
        if self._unsaved:
            self._save_unsaved()
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

        # Mismatches and failed kernel runs wait until the batch's imap is finished: confirming,
        # minimizing and re-running use pool.run, which inside an open imap would queue behind
        # the batch's cases in flight.
        later: list[_Later] = []
        outcomes = self.kernel.imap(feed())
        try:
            for k in outcomes:
                i, case = pending.popleft()
                if _is_error(k):
                    later.append((case, k, i, None, None))  # counted when it is re-run
                else:
                    self._one(case, k, i, later)
                if self._time_up():
                    break
                if self.stats.cases % TICK == 0:
                    self._tick()
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()  # a stopped batch: the pool finishes what is in flight and forgets it
        for case, k, i, m, verdict in later:
            if m is None:
                retried = self._retry_lost(case, k, i)
                if retried is not None:
                    self._one(case, retried, i, None)
            else:
                assert verdict is not None
                self._mismatch(case, k, m, verdict, i)

    def _one(self, case: Case, k: Outcome, index: int, later: list[_Later] | None) -> Outcome | None:
        """One kernel outcome against the model; returns the model outcome.  Mismatches go to
        `later` (or are handled now when there is no batch in flight)."""
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
            if later is not None:
                later.append((case, k, index, m, v))
            else:
                self._mismatch(case, k, m, v, index)
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

    def done(self) -> bool:
        return self._done()

    def finish(self) -> None:
        """Last attempt at saving what a full disk refused."""
        self._save_unsaved()

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

    # ---- a mismatch -------------------------------------------------------------------------

    def _mismatch(self, case: Case, k: Outcome, m: Outcome, verdict: Verdict, index: int) -> None:
        """A difference, or a broken promise of the kernel (verdict.kinds): confirm it, minimize
        it keeping the same kinds, bucket and save it."""
        st = self.stats
        if verdict.known:
            self._known_bug(case, k, m, verdict, index)
            return
        st.mismatches += 1
        kinds = verdict.kinds
        diffs = list(verdict.differences)
        again = rerun(case, kinds, self.kernel, self.model)
        if not again.reproduced:
            st.flaky += 1
            path = self._keep_flaky(case, index, diffs, again.differences)
            if self.campaign is not None:
                self.campaign.record_flaky(case_index=index, fields=sorted(kinds), saved=path)
            self.on_event("flaky", st)
            return
        st.findings += 1
        pre = (kinds, *case_features(case))
        known = self._known.get(pre)
        if known is not None:
            # Same fields, helpers and events as a finding minimized earlier in this run.
            rec = self._record(case, again.kernel, again.model, again.differences, kinds,
                               {"seed": self.cfg.seed, "case index": index}, bucket_hint=known)
            st.unique.add(rec)
            self.on_event("finding", st)
            return
        t0 = time.monotonic()
        # A case from inside the deterministic zone is kept inside it while shrinking.
        admissible = self._in_zone if zone_violation(case, self.cfg.gen) is None else None
        budget = 0.0 if self.stop else self.cfg.minimize_seconds  # a stop saves it unminimized, quickly
        if self.cfg.duration is not None:  # --duration holds for minimizing too
            budget = max(0.0, min(budget, self.cfg.duration - st.elapsed()))
        # Minimized to what the cause needs: the first difference stays of the same kind, the
        # observables it touched downstream may go (signature.py: the bucket is the root's shape).
        root = root_kind(again.differences, again.kernel, again.model)
        small, mstats = minimize(case, self._same(kinds, root), max_seconds=budget, admissible=admissible,
                                 stop=self._stop_asked)
        st.minimize_seconds += time.monotonic() - t0
        final = rerun(small, kinds, self.kernel, self.model, root)
        if not final.reproduced:  # minimized into a timing-dependent corner: keep the original
            small, final = case, again
        notes = {
            "seed": self.cfg.seed,
            "case index": index,
            "original size": _size_text(case),
            "minimized size": _size_text(small),
            "minimizer": f"{mstats.calls} runs, {mstats.seconds:.1f} s"
            + (" (time limit hit)" if mstats.timed_out else ""),
            # Past --duration (a whole batch may still hold mismatches) or after a stop, the
            # findings are saved without the bcc compile (0.4 s per program) to end on time.
            "independent backend": ("not checked: the run's time was up; check it with diffuzz run CASE "
                                    "--side kernel --backend bcc") if self._time_up()
            else self.independent.check(small, final.kinds or kinds, final.model),
        }
        bucket = self._record(small, final.kernel, final.model, final.differences, final.kinds or kinds, notes)
        self._known[pre] = bucket
        st.unique.add(bucket)
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
        bucket = self._store(Finding(case, k, m, verdict.differences, sig,
                                     {"seed": self.cfg.seed, "case index": index,
                                      "known kernel bug": ", ".join(verdict.known)}), None)
        st.unique.add(bucket)
        self.on_event("finding", st)

    def _in_zone(self, case: Case) -> bool:
        return zone_violation(case, self.cfg.gen) is None

    def _same(self, kinds: Kinds, root: str | None = None) -> Callable[[Case], bool]:
        def predicate(c: Case) -> bool:
            k = self.kernel.run(c)
            m = self.model(c)
            return shows(judge(c, k, m), k, m, kinds, root)

        return predicate


def _is_error(outcome: Outcome) -> bool:
    """kernel_runner.pool.is_error, without importing the kernel side into the engine."""
    return "error" in outcome.notes


def _size_text(case: Case) -> str:
    c = complexity(case)
    return f"{c[0]} events, {c[1]} steps in {c[2]} step list(s), {c[3]} inserts, {c[4]} pair(s)"

