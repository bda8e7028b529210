"""`diffuzz triage WORKDIR`: finish the triage a fuzz run left under WORKDIR/unconfirmed/.

A fuzz run keeps a mismatch there when its triage process could not take it before the run
ended (the grace after --duration ran out, a stop signal, a triage process that died).  Each is
run again on the kernel and the model and, when it still differs, confirmed, minimized and
checked on the independent backend inline (diffuzz/engine/triage.py), then saved under
WORKDIR/findings/ and counted on the campaign like any fuzz finding.  A case leaves unconfirmed/
only once what became of it is on disk; one that agrees now goes to flaky/ with its first run.
A signal stops after the current case (its minimizer ends at once); the rest stay for next time.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from diffuzz.cli.common import BadInput, Unusable, kernel_option, profile_option, remember_profile
from diffuzz.cli.fuzz import (
    _check_profile_name,
    _independent,
    _pool,
    _profiled_model,
    _StopOnSignal,
    backend_option,
    deadline_option,
    minimize_seconds_option,
)
from diffuzz.contract.case import CaseError, load_case

if TYPE_CHECKING:
    from diffuzz.engine.loop import Engine

_NAME = re.compile(r"^seed(\d+)-case(\d+)$")


@click.command("triage")
@click.argument("workdir", type=click.Path(file_okay=False))
@backend_option
@deadline_option
@minimize_seconds_option
@kernel_option
@profile_option
def triage(workdir: str, backend: str, deadline: float, minimize_seconds: float, kernel: str,
           kernel_profile: str | None) -> int:
    """Confirm, minimize and save the mismatches a fuzz run kept under WORKDIR/unconfirmed/."""
    from diffuzz.engine.campaign import Campaign, CampaignError
    from diffuzz.engine.corpus import Corpus
    from diffuzz.engine.loop import Engine, FuzzConfig
    from diffuzz.engine.zone import GenConfig

    root = Path(workdir)
    if not root.is_dir():
        raise BadInput(f"{workdir}: no such work directory")
    todo = sorted(p for p in (root / "unconfirmed").glob("*.json") if not p.name.startswith("."))
    if not todo:
        click.echo(f"diffuzz triage: nothing to triage in {root / 'unconfirmed'}")
        return 0
    _check_profile_name(kernel_profile)
    try:
        campaign = Campaign.open(workdir, sys.argv, os.uname().release if kernel == "host" else kernel, "triage")
    except CampaignError as e:
        raise Unusable(str(e)) from None
    reason = "error"
    try:
        pool = _pool(1, backend, deadline, kernel)
        independent = _independent(deadline, kernel)
        try:
            choice, model = _profiled_model(kernel_profile, pool)
            remember_profile(kernel, choice)
            gen = GenConfig(vm=True) if kernel != "host" else GenConfig()
            config = FuzzConfig(minimize_seconds=minimize_seconds, gen=gen)
            engine = Engine(config, pool, model, Corpus(workdir), independent, campaign=campaign,
                            profile=choice.profile)
            click.echo(f"diffuzz triage: {len(todo)} case(s) in {root / 'unconfirmed'}, {choice.line()}")
            with _StopOnSignal(engine):
                left = _triage_all(engine, todo)
        finally:
            independent.close()
            pool.close()
        engine.finish()
        reason = "interrupted" if engine.stop else "triage done"
    finally:
        campaign.close(reason)
    for text in engine.unsaved_cases():
        print(f"diffuzz: UNSAVED finding, case follows:\n{text}", file=sys.stderr, flush=True)
    if left:
        click.echo(f"diffuzz triage: stopped; {left} case(s) stay in {root / 'unconfirmed'} for next time")
    return 0


def _triage_all(engine: Engine, todo: list[Path]) -> int:
    """Each case in turn; returns how many were left (a stop)."""
    for n, path in enumerate(todo):
        if engine.stop:
            return len(todo) - n
        m = _NAME.match(path.stem)
        seed, index = (int(m.group(1)), int(m.group(2))) if m else (0, n)
        try:
            case = load_case(str(path))
        except (OSError, CaseError) as e:
            click.echo(f"  {path.name}: cannot read it ({e}); left in place")
            continue
        engine.cfg.seed = seed  # kept cases are named by their own stream seed
        what = engine.retriage(case, index)
        if engine.unsaved_cases():
            click.echo(f"  {path.name}: {what}, but the disk refused it; left in place")
            continue
        _done_with(path, what)
        click.echo(f"  {path.name}: {what}")
    return 0


def _done_with(path: Path, what: str) -> None:
    """The case's result is on disk: it leaves unconfirmed/ (to flaky/ when it agrees now, so the
    first run's difference stays readable)."""
    why = path.with_suffix(".txt")
    if what.startswith("kernel and model agree"):
        flaky = path.parent.parent / "flaky"
        flaky.mkdir(exist_ok=True)
        if why.exists():
            why.rename(flaky / why.name)
        path.rename(flaky / path.name)
        return
    why.unlink(missing_ok=True)
    path.unlink()
