"""`diffuzz fuzz` and `diffuzz minimize` (registered by diffuzz/cli/commands.py).

    diffuzz fuzz [--duration S] [--cases N] [--seed K] [--jobs J] [--workdir DIR] [--backend interp]
                 [--engine random|atheris]
    diffuzz minimize CASE -o OUT

`fuzz` keeps a campaign (diffuzz/engine/campaign.py) in WORKDIR: stats.json, events.jsonl, state.json;
the same command with the same WORKDIR resumes it (counts, elapsed time, coverage, seed cursor).
Findings go to WORKDIR/findings/.  The repository's corpus/findings/ holds only triaged findings
that people copy in, so the default WORKDIR is runs/default (relative to the current directory).

The kernel side is the real kernel pool (kernel_runner.pool.KernelPool); the model is sim.run.
Both are imported when a command runs, so `diffuzz --help` works anywhere.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from diffuzz.cli.common import kernel_option, profile_option, remember_profile
from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome

BACKENDS = ("interp", "bcc")
ENGINES = ("random", "atheris")

# Options fuzz shares with triage (diffuzz/cli/triage.py).
backend_option = click.option("--backend", type=click.Choice(BACKENDS), default="interp", show_default=True,
                              help="Kernel program backend.")
deadline_option = click.option("--deadline", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                               help="Seconds before a kernel case counts as a hang.")
minimize_seconds_option = click.option("--minimize-seconds", type=click.FloatRange(min=0), default=30.0,
                                       show_default=True, help="Time budget for minimizing one new finding.")


def _profiled_model(forced: str | None, pool: Any) -> tuple[Any, Callable[[Case], Outcome]]:
    """Probe the kernel through the pool (diffuzz/engine/probes.py) and bind the model to the chosen
    profile: (ProfileChoice, model)."""
    from diffuzz.cli.common import choose_profile, model_runner

    choice = choose_profile(forced, pool.run)
    return choice, model_runner(choice)


def _check_profile_name(forced: str | None) -> None:
    """An unknown --kernel-profile is bad input before any worker starts."""
    if forced is not None:
        from diffuzz.cli.common import choose_profile

        choose_profile(forced, None)


def _pool(jobs: int, backend: str, deadline: float, kernel: str = "host") -> Any:
    from diffuzz.cli.common import BadInput, Unusable, kernel_label

    if kernel != "host" and backend != "interp":
        raise BadInput(f"--backend {backend} runs on the host kernel only; use --backend interp with --kernel {kernel}")
    try:
        from kernel_runner.backend import KernelUnsupported
        from kernel_runner.pool import KernelPool
    except ImportError as e:
        raise Unusable(f"the kernel side is not available: {e}") from None
    try:
        return KernelPool(jobs=jobs, backend=backend, deadline=deadline, kernel=kernel)
    except KernelUnsupported as e:
        raise Unusable(f"kernel side ({kernel_label(kernel, backend)}): {e}; run `diffuzz doctor` to see what is "
                       "missing") from None


def _triage_kernel(backend: str, deadline: float, kernel: str) -> Callable[[], Any]:
    """The triage process's own kernel worker, started in that process (its failure, or a stop
    signal to it while it starts, is the triage process's to report: no Unusable here)."""
    def make() -> Any:
        from kernel_runner.pool import KernelPool

        return KernelPool(jobs=1, backend=backend, deadline=deadline, kernel=kernel)

    return make


def _independent(deadline: float, kernel: str) -> Any:
    """The bcc backend for confirmation: on the host kernel only (a guest has no bcc), so a VM
    campaign confirms by re-running in the VM and says the independent check was not made."""
    from diffuzz.engine.confirm import Independent

    if kernel != "host":
        return Independent(None, f"the bcc backend runs on the host kernel, not in {kernel}")
    return Independent(_independent_factory(deadline))


def _independent_factory(deadline: float) -> Callable[[], Any]:
    def make() -> Any:
        from kernel_runner.pool import KernelPool

        return KernelPool(jobs=1, backend="bcc", deadline=max(deadline, 30.0))

    return make


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class _StopOnSignal:
    """SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 ask the engine to stop after the
    current case (everything found so far is already on disk); a second Ctrl-C stops at once.
    The same signals sent to a kernel worker alone stop it too (kernel_runner/pool.py)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored on purpose by whoever started us (nohup: SIGHUP; a background job: SIGINT)
            self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.engine.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.engine.stop = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


@click.command("fuzz")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after S seconds.")
@click.option("--cases", "n_cases", type=click.IntRange(min=1), help="Stop after N cases.")
@click.option("--seed", type=click.IntRange(min=0, max=(1 << 32) - 1), default=None,
              help="Seed of the case stream (default: the resumed campaign's, else from the clock; printed).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Kernel workers (default: one per core).")
@click.option("--workdir", type=click.Path(file_okay=False), default="runs/default", show_default=True,
              help="Campaign directory: state, stats.json, events.jsonl; findings in DIR/findings/<bucket>/. "
                   "Resumed when it holds a campaign.")
@click.option("--engine", "engine_name", type=click.Choice(ENGINES), default="random", show_default=True,
              help="random: the seeded case stream, pipelined over all workers; atheris: libFuzzer's "
                   "coverage-guided loop in-process (feature signal as coverage), one case at a time.")
@backend_option
@deadline_option
@minimize_seconds_option
@click.option("--stats-interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between rewrites of WORKDIR/stats.json and state.json.")
@kernel_option
@profile_option
def fuzz(duration: float | None, n_cases: int | None, seed: int | None, jobs: int | None, workdir: str,
         engine_name: str, backend: str, deadline: float, minimize_seconds: float, stats_interval: float,
         kernel: str, kernel_profile: str | None) -> int:
    """Differential fuzzing: random cases on the kernel and on the model, every difference
    confirmed, minimized and saved under WORKDIR/findings/.  The model runs under the kernel
    profile the probes choose (or --kernel-profile), named on the first line and recorded in
    stats.json, events.jsonl and every finding.  With --kernel vm:NAME every worker is a VM of
    that kernel (diffuzz kernels), and the deadline is stretched by the guest's slowdown."""
    import sys

    from diffuzz.cli.common import Unusable
    from diffuzz.cli.status import Status
    from diffuzz.engine.campaign import Campaign, CampaignError
    from diffuzz.engine.corpus import Corpus
    from diffuzz.engine.loop import Engine, FuzzConfig
    from diffuzz.engine.zone import GenConfig

    if engine_name == "atheris":
        try:
            import atheris  # noqa: F401
        except ImportError:
            raise Unusable("--engine atheris needs atheris: .venv/bin/pip install atheris") from None
    _check_profile_name(kernel_profile)
    try:
        where = os.uname().release if kernel == "host" else kernel
        campaign = Campaign.open(workdir, sys.argv, where, engine_name, flush_interval=stats_interval)
    except CampaignError as e:
        raise Unusable(str(e)) from None
    reason = "error"
    try:
        seed = campaign.stream_seed(seed, int(time.time()) & 0xFFFF_FFFF)
        pool = _pool(jobs or (os.cpu_count() or 1), backend, deadline, kernel)
        choice, model = _profiled_model(kernel_profile, pool)
        remember_profile(kernel, choice)
        campaign.set_kernel_profile(choice.to_dict())
        corpus = Corpus(workdir)
        corpus.remove_stale_tmp()
        status = Status()
        independent = _independent(deadline, kernel)
        # In a VM the cases the host must never run are let in (docs/zone.md, the VM-only rules).
        gen = GenConfig(vm=True) if kernel != "host" else GenConfig()
        engine = Engine(FuzzConfig(seed=seed, cases=n_cases, duration=duration, minimize_seconds=minimize_seconds,
                                   gen=gen),
                        pool, model, corpus, independent, on_event=status.update, campaign=campaign,
                        # atheris steps one case at a time in-process: it triages inline
                        triage_kernel=None if engine_name == "atheris" else _triage_kernel(backend, deadline, kernel),
                        profile=choice.profile)
        resumed = f", resuming session {campaign.sessions} at case {campaign.execs:,}" if campaign.sessions > 1 else ""
        status.console.print(f"diffuzz fuzz: {choice.line()}, engine {engine_name}, seed {seed}, "
                             f"{pool.jobs} kernel worker(s){'' if kernel == 'host' else ' in ' + kernel}, "
                             f"backend {backend}, campaign in {workdir}/{resumed}")
        try:
            with _StopOnSignal(engine):
                if engine_name == "atheris":
                    from diffuzz.cli.fuzz_target import run_engine

                    def finish(st: Any) -> None:  # libFuzzer never returns: the loop ends here
                        independent.close()
                        pool.close()
                        _finish(engine, campaign, status, st, corpus, "interrupted" if engine.stop else "limit reached")

                    stats = run_engine(engine, str(campaign.workdir / "atheris-corpus"), finish)
                else:
                    stats = engine.run()
        finally:
            independent.close()
            pool.close()
        reason = "interrupted" if engine.stop else "limit reached"
        _finish(engine, campaign, status, stats, corpus, reason)
    finally:
        campaign.close(reason)  # no-op after _finish
    return 0


def _finish(engine: Any, campaign: Any, status: Any, stats: Any, corpus: Any, reason: str) -> None:
    """Save what can be saved, close the campaign, print the summary (and any finding the disk
    refused, as case JSON, so it is never lost silently)."""
    import sys

    engine.finish()
    campaign.close(reason)
    status.close(stats, str(corpus.findings))
    for text in engine.unsaved_cases():
        print(f"diffuzz: UNSAVED finding, case follows:\n{text}", file=sys.stderr, flush=True)


@click.command("minimize")
@click.argument("case_path", metavar="CASE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the result.")
@click.option("--backend", type=click.Choice(BACKENDS), default="interp", show_default=True)
@click.option("--deadline", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--max-seconds", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Stop minimizing after this long and keep the best so far.")
@profile_option
def minimize(case_path: str, output: str, backend: str, deadline: float, max_seconds: float,
             kernel_profile: str | None) -> int:
    """Shrink a CASE whose kernel breaks a promise (diffuzz/engine/invariants.py) or differs from
    the model, keeping the same broken promises or differing fields, and write the smallest case
    found to OUT."""
    from diffuzz.cli.common import BadInput, load_or_fail
    from diffuzz.engine.corpus import format_diff, write_atomic
    from diffuzz.engine.minimize import complexity
    from diffuzz.engine.minimize import minimize as run_minimizer
    from diffuzz.engine.oracle import judge
    from diffuzz.engine.zone import zone_violation

    case = load_or_fail(case_path)
    _check_profile_name(kernel_profile)
    pool = _pool(1, backend, deadline)
    try:
        choice, model = _profiled_model(kernel_profile, pool)
        click.echo(f"diffuzz minimize: {choice.line()}")
        k = pool.run(case)
        if "error" in k.notes:
            raise BadInput(f"{case_path}: the kernel side could not run it: {k.notes['error']}")
        kinds = judge(case, k, model(case)).kinds
        if not kinds:
            raise BadInput(f"{case_path}: kernel and model agree on this case and the kernel keeps its promises; "
                           "there is nothing to minimize")

        def same(c: Case) -> bool:
            kc = pool.run(c)
            return "error" not in kc.notes and judge(c, kc, model(c)).kinds == kinds

        # A case inside the deterministic zone stays inside it while shrinking (no walk into a
        # kernel hang); a case outside it is shrunk without that limit.
        outside = zone_violation(case)
        if outside:
            click.echo(f"note: {case_path} is outside the deterministic zone ({outside}); shrinking without it")

        def in_zone(c: Case) -> bool:
            return zone_violation(c) is None

        small, st = run_minimizer(case, same, max_seconds=max_seconds, admissible=None if outside else in_zone)
        write_atomic(output, small.to_json() + "\n")
        k2 = pool.run(small)
    finally:
        pool.close()
    before, after = complexity(case), complexity(small)
    click.echo(f"minimized {case_path} -> {output} in {st.seconds:.1f} s ({st.calls} runs"
               f"{', time limit hit' if st.timed_out else ''})")
    click.echo(f"  events {before[0]} -> {after[0]}, steps {before[1]} -> {after[1]}, step lists {before[2]} -> "
               f"{after[2]}, inserts {before[3]} -> {after[3]}, pairs {before[4]} -> {after[4]}")
    click.echo(f"  differing fields: {', '.join(sorted(kinds))}")
    click.echo(format_diff(small, judge(small, k2, model(small)).differences), nl=False)
    return 0
