"""What a fuzz run is asked to do (FuzzConfig) and what it did (FuzzStats, the status line's source)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from diffuzz.engine.zone import DEFAULT, GenConfig


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
    known: int = 0  # documented kernel bugs met again (findings/known.K<n>-*), not counted as findings
    model_errors: int = 0
    kernel_errors: int = 0  # kernel-side runs that failed (kernel_runner.pool.is_error)
    unique: set[str] = field(default_factory=set)  # buckets hit in this run
    new_buckets: list[str] = field(default_factory=list)
    last_new: float | None = None
    minimize_seconds: float = 0.0
    hangs: int = 0  # kernel cases past their deadline (this session)
    retried: int = 0  # kernel runs that failed and were re-run
    coverage: int = 0  # distinct features seen (over the whole campaign when there is one)
    unsaved: int = 0  # findings that could not be written yet (disk full)
    triage_pending: int = 0  # mismatches in the triage process or waiting for it
    unconfirmed: int = 0  # mismatches kept under unconfirmed/ for `diffuzz triage`
    # mismatches only counted, never re-run: new keys turned away while their root kind was
    # queued (triage_process.py), and the others of a key whose first came back flaky
    triage_skipped: int = 0
    # Earlier sessions of the same campaign (zero without one): the status shows totals.
    cases_before: int = 0
    elapsed_before: float = 0.0
    sessions: int = 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def total_cases(self) -> int:
        return self.cases_before + self.cases

    def total_elapsed(self) -> float:
        return self.elapsed_before + self.elapsed()

    def rate(self) -> float:
        e = self.elapsed()
        return self.cases / e if e > 0 else 0.0
