"""The live status of a fuzz run (rich), and its final summary.

On a terminal: one line, redrawn four times a second.  Elsewhere (CI logs, pipes): the same
line printed at most every `log_every` seconds (findings included: they are in events.jsonl),
so a log shows progress without a flood.  Counts are this session's; when a campaign resumed,
the campaign's totals follow in brackets.
"""

from __future__ import annotations

import math
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from diffuzz.engine.fuzz_config import FuzzStats


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def status_text(st: FuzzStats) -> Text:
    since = "never" if st.last_new is None else f"{_hms(time.monotonic() - st.last_new)} ago"
    t = Text()
    t.append(f"cases {st.cases:,}", style="bold")
    if st.cases_before:
        t.append(f" (campaign {st.total_cases():,}, session {st.sessions})")
    t.append(f"  {st.rate():,.0f}/s")
    t.append(f"  coverage {st.coverage:,}", style="cyan")
    t.append("  findings ")
    t.append(f"{st.findings}", style="bold red" if st.findings else "")
    t.append(f" ({len(st.unique)} unique, {len(st.new_buckets)} new)")
    if st.flaky:
        t.append(f"  flaky {st.flaky}", style="yellow")
    if st.known:
        t.append(f"  known kernel bugs {st.known}", style="yellow")
    if st.hangs:
        t.append(f"  hangs {st.hangs}", style="bold magenta")
    if st.kernel_errors:
        t.append(f"  kernel errors {st.kernel_errors}", style="bold magenta")
    if st.model_errors:
        t.append(f"  model errors {st.model_errors}", style="bold magenta")
    if st.unsaved:
        t.append(f"  UNSAVED findings {st.unsaved}", style="bold red")
    if st.triage_pending or st.triage_skipped:
        t.append(f"  triage queue {st.triage_pending}" + (f" ({st.triage_skipped:,} turned away)"
                                                         if st.triage_skipped else ""), style="yellow")
    if st.unconfirmed:
        t.append(f"  unconfirmed {st.unconfirmed}", style="bold yellow")
    t.append(f"  last new finding: {since}")
    t.append(f"  elapsed {_hms(st.elapsed())}")
    return t


class Status:
    def __init__(self, console: Console | None = None, log_every: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.log_every = log_every
        self._last_log = -math.inf  # the first line prints at once (monotonic time starts at boot)
        self._live: Live | None = None
        # Live redraws only when both stdout and the status stream are terminals: `> log` with
        # stderr still on the screen is a logged run too.
        if self.console.is_terminal and sys.stdout.isatty():
            self._live = Live(Text("starting..."), console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, what: str, st: FuzzStats) -> None:
        if self._live is not None:
            self._live.update(status_text(st))
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            self.console.print(status_text(st), soft_wrap=True)

    def close(self, st: FuzzStats, findings_dir: str) -> None:
        if self._live is not None:
            self._live.update(status_text(st))
            self._live.stop()
        self.console.print(summary_table(st, findings_dir))


def summary_table(st: FuzzStats, findings_dir: str) -> Table:
    t = Table(title="diffuzz fuzz: summary", show_header=False)
    t.add_column(justify="right", style="bold")
    t.add_column()
    t.add_row("cases", f"{st.cases:,} in {_hms(st.elapsed())} ({st.rate():,.0f}/s)")
    if st.cases_before:
        t.add_row("campaign", f"{st.total_cases():,} cases in {_hms(st.total_elapsed())} over {st.sessions} sessions")
    t.add_row("coverage", f"{st.coverage:,} features")
    t.add_row("mismatches", f"{st.mismatches} seen, {st.findings} reproduced, {st.flaky} flaky")
    t.add_row("buckets", f"{len(st.unique)} hit, {len(st.new_buckets)} new")
    if st.triage_skipped:
        t.add_row("triage", f"{st.triage_skipped:,} mismatch(es) of a kind already queued only counted")
    if st.known:
        t.add_row("known bugs", f"{st.known} cases showed a documented kernel bug again (findings/known.*)")
    for name in st.new_buckets:
        t.add_row("new", f"{findings_dir}/{name}")
    if st.model_errors:
        t.add_row("model errors", f"{st.model_errors} (cases saved under model-errors/)")
    if st.hangs:
        t.add_row("hangs, crashes", f"{st.hangs} (cases saved under hangs/, a VM guest's crashes under crashes/)")
    if st.retried:
        t.add_row("re-run", f"{st.retried} case(s) whose kernel worker failed or died")
    if st.kernel_errors:
        t.add_row("kernel errors", f"{st.kernel_errors} (cases saved under kernel-errors/)")
    if st.unconfirmed:
        t.add_row("unconfirmed", f"{st.unconfirmed} mismatch(es) not triaged (unconfirmed/): "
                                 "finish with diffuzz triage WORKDIR")
    if st.unsaved:
        t.add_row("UNSAVED", f"{st.unsaved} finding(s) could not be written; their cases follow on stderr")
    t.add_row("minimizing", f"{st.minimize_seconds:.1f} s")
    return t
