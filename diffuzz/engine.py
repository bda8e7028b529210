"""The differential fuzz loop: generate, run on both sides, compare, confirm, minimize, save.

Pipelining: cases go to the kernel pool in batches through `pool.imap(batch)` (its workers run
them in their own processes, in order), while the main process runs the model on the same
cases; the model for case i overlaps the kernel work on the cases after it.  A mismatch
stops the pipeline only for as long as confirmation and minimization take.

Dedup before the expensive part: a mismatch whose (differing fields, helpers, events) were
already minimized in this run is re-run once (so flaky ones still do not count) and then
counted on the bucket it produced, without minimizing again.
"""

from __future__ import annotations

import platform
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from diffuzz.case import Case
from diffuzz.compare import Difference, compare
from diffuzz.confirm import Independent, rerun
from diffuzz.corpus import Corpus, Finding, write_atomic
from diffuzz.generate import DEFAULT, GenConfig, random_case, zone_violation
from diffuzz.minimize import complexity, minimize
from diffuzz.outcome import Data, Outcome
from diffuzz.signature import Kinds, Signature, case_features, diff_kinds

Model = Callable[[Case], Outcome]


class FunctionPool:
    """A kernel-pool look-alike over a plain function (for tests, and for fuzzing one model
    against another).  Same interface as kernel_runner.pool.KernelPool: run, imap, close.

    What it returns must look like a kernel outcome: the kernel reads concrete bytes, so the
    model's wildcard ranges (unwritten pushed bytes) are filled with the model's placeholder
    bytes; compare.py would otherwise report every wildcard on the kernel side."""

    def __init__(self, fn: Model) -> None:
        self.fn = fn

    def run(self, case: Case) -> Outcome:
        return _concrete(self.fn(case))

    def imap(self, cases: Iterable[Case]) -> Iterator[Outcome]:
        return map(self.run, cases)

    def close(self) -> None:
        pass


@dataclass
class FuzzConfig:
    seed: int = 0
    cases: int | None = None  # stop after this many cases
    duration: float | None = None  # stop after this many seconds
    batch: int = 1024  # cases per pool.imap; mismatches are handled at the end of each
    minimize_seconds: float = 30.0
    gen: GenConfig = DEFAULT


@dataclass
class FuzzStats:
    started: float = field(default_factory=time.monotonic)
    cases: int = 0
    mismatches: int = 0  # raw differences seen
    findings: int = 0  # confirmed (reproduced) differences
    flaky: int = 0
    model_errors: int = 0
    kernel_errors: int = 0  # kernel-side runs that failed (kernel_runner.pool.is_error)
    unique: set[str] = field(default_factory=set)  # buckets hit in this run
    new_buckets: list[str] = field(default_factory=list)
    last_new: float | None = None
    minimize_seconds: float = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        e = self.elapsed()
        return self.cases / e if e > 0 else 0.0


class Engine:
    def __init__(self, config: FuzzConfig, kernel: Any, model: Model, corpus: Corpus,
                 independent: Independent | None = None,
                 on_event: Callable[[str, FuzzStats], None] | None = None) -> None:
        self.cfg = config
        self.kernel = kernel
        self.model = model
        self.corpus = corpus
        self.independent = independent or Independent(None)
        self.on_event = on_event or (lambda what, stats: None)
        self.stats = FuzzStats()
        self.stop = False
        # (differing fields, helpers, events) of each mismatch minimized in this run -> its bucket
        self._known: dict[tuple[Kinds, tuple[str, ...], tuple[str, ...]], str] = {}

    # ---- the loop -------------------------------------------------------------------------

    def _done(self) -> bool:
        cfg, st = self.cfg, self.stats
        return (self.stop or (cfg.cases is not None and st.cases >= cfg.cases)
                or (cfg.duration is not None and st.elapsed() >= cfg.duration))

    def run(self) -> FuzzStats:
        index = 0
        while not self._done():
            n = self.cfg.batch
            if self.cfg.cases is not None:
                n = min(n, self.cfg.cases - self.stats.cases)
            self._batch(index, n)
            index += n
            self.on_event("tick", self.stats)
        return self.stats

    def _batch(self, index: int, n: int) -> None:
        # Cases are generated lazily, as the pool asks for them, so generation overlaps the
        # workers too; `pending` holds the generated cases whose outcomes have not come back.
        pending: deque[Case] = deque()

        def feed() -> Iterator[Case]:
            for i in range(index, index + n):
                case = random_case(self.cfg.seed, i, self.cfg.gen)
                pending.append(case)
                yield case

        # Mismatches wait until the batch's imap is finished: confirming and minimizing use
        # pool.run, and a pool is driven by one iteration at a time.
        mismatches = []
        outcomes = self.kernel.imap(feed())
        try:
            for i, k in enumerate(outcomes, start=index):
                case = pending.popleft()
                m = self._model(case, i)
                self.stats.cases += 1
                if _is_error(k):
                    self._kernel_error(case, k, i)
                elif m is not None:
                    diffs = compare(k, m)
                    if diffs:
                        mismatches.append((case, k, m, diffs, i))
                if self.stop or (self.cfg.duration is not None and self.stats.elapsed() >= self.cfg.duration):
                    break
                if i % 64 == 0:
                    self.on_event("tick", self.stats)
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()  # a stopped batch: the pool finishes what is in flight and forgets it
        for mismatch in mismatches:
            self._mismatch(*mismatch)

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

    def _kernel_error(self, case: Case, k: Outcome, index: int) -> None:
        # The kernel side observed nothing (worker error or death): not a kernel behaviour, but
        # worth a look, so the case is kept.
        self.stats.kernel_errors += 1
        d = self.corpus.root / "kernel-errors"
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / f"seed{self.cfg.seed}-case{index}.json", case.to_json() + "\n")
        write_atomic(d / f"seed{self.cfg.seed}-case{index}.txt", f"{k.notes.get('error')}\n")

    # ---- a mismatch -------------------------------------------------------------------------

    def _mismatch(self, case: Case, k: Outcome, m: Outcome, diffs: list[Difference], index: int) -> None:
        st = self.stats
        st.mismatches += 1
        kinds = diff_kinds(diffs)
        again = rerun(case, kinds, self.kernel, self.model)
        if not again.reproduced:
            st.flaky += 1
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
        small, mstats = minimize(case, self._same(kinds), max_seconds=self.cfg.minimize_seconds,
                                 admissible=admissible)
        st.minimize_seconds += time.monotonic() - t0
        final = rerun(small, kinds, self.kernel, self.model)
        if not final.reproduced:  # minimized into a timing-dependent corner: keep the original
            small, final = case, again
        notes = {
            "seed": self.cfg.seed,
            "case index": index,
            "original size": _size_text(case),
            "minimized size": _size_text(small),
            "minimizer": f"{mstats.calls} runs, {mstats.seconds:.1f} s"
            + (" (time limit hit)" if mstats.timed_out else ""),
            "independent backend": self.independent.check(small, kinds, final.model),
        }
        bucket = self._record(small, final.kernel, final.model, final.differences, kinds, notes)
        self._known[pre] = bucket
        st.unique.add(bucket)
        self.on_event("finding", st)

    def _in_zone(self, case: Case) -> bool:
        return zone_violation(case, self.cfg.gen) is None

    def _same(self, kinds: Kinds) -> Callable[[Case], bool]:
        def predicate(c: Case) -> bool:
            k = self.kernel.run(c)
            return not _is_error(k) and diff_kinds(compare(k, self.model(c))) == kinds

        return predicate

    def _record(self, case: Case, k: Outcome, m: Outcome, diffs: tuple[Difference, ...], kinds: Kinds,
                notes: dict[str, Any], bucket_hint: str | None = None) -> str:
        release = str(k.notes.get("kernel") or platform.release())
        sig = Signature.of(kinds, case, release)
        if bucket_hint is not None and sig.bucket() != bucket_hint:
            # The unminimized case names another bucket; count it on the one it minimized to.
            hinted = self.corpus.findings / bucket_hint
            if (hinted / "bucket.json").exists():
                rec = self.corpus.hit(hinted, Finding(case, k, m, diffs, sig, notes))
                return rec.bucket.name
        rec = self.corpus.record(Finding(case, k, m, diffs, sig, notes))
        if rec.new:
            self.stats.new_buckets.append(rec.bucket.name)
            self.stats.last_new = time.monotonic()
        return rec.bucket.name


def _concrete(o: Outcome) -> Outcome:
    def data(d: Data | None) -> Data | None:
        return Data(d.raw) if d is not None and d.unknown else d

    return replace(
        o,
        events=tuple(replace(e, data=data(e.data)) if e.data is not None and e.data.unknown else e for e in o.events),
        endpoints={name: replace(ep, rx=data(ep.rx)) if ep.rx.unknown else ep for name, ep in o.endpoints.items()},
    )


def _is_error(outcome: Outcome) -> bool:
    """kernel_runner.pool.is_error, without importing the kernel side into the engine."""
    return "error" in outcome.notes


def _size_text(case: Case) -> str:
    c = complexity(case)
    return f"{c[0]} events, {c[1]} steps in {c[2]} step list(s), {c[3]} inserts, {c[4]} pair(s)"

