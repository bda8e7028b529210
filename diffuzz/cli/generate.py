"""diffuzz generate: the cases a campaign would run, as files, for people to read or share.

    diffuzz generate --seed S --count N -o DIR [--unrestricted]

Case i of a campaign seeded S is `random_case(S, i)` (diffuzz/engine/generate.py): the same
stream `diffuzz fuzz --seed S` runs first, one file per case, `seed<S>-case<i>.json`, each
written whole (a temporary file, then a rename), so an interrupted run leaves only complete
files.  The summary counts what the generator's choices gave: sender-thread layouts, helpers
and event kinds.
"""

from __future__ import annotations

import collections
from pathlib import Path

import click

from diffuzz.cli.common import BadInput
from diffuzz.engine.corpus import write_atomic
from diffuzz.engine.generate import random_case
from diffuzz.engine.zone import DEFAULT, GenConfig

MAX_COUNT = 1_000_000


@click.command()
@click.option("--seed", type=click.IntRange(min=0, max=(1 << 32) - 1), required=True,
              help="The campaign seed (`diffuzz fuzz --seed`).")
@click.option("--count", type=click.IntRange(min=1, max=MAX_COUNT), required=True, help="How many cases.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the case files (made if missing).")
@click.option("--unrestricted", is_flag=True,
              help="Leave the deterministic zone (docs/zone.md): sizes up to the format's limits, sockopts.  "
                   "Such cases belong in a VM; a campaign never runs them on the host.")
def generate(seed: int, count: int, out_dir: Path, unrestricted: bool) -> None:
    """Write the first COUNT cases a campaign seeded SEED runs, one JSON file each.

    Examples:
      diffuzz generate --seed 7 --count 20 -o /tmp/cases
      diffuzz run /tmp/cases/seed7-case3.json --side model
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"{out_dir}: cannot make the directory: {e.strerror}") from None
    config = GenConfig(deterministic=False) if unrestricted else DEFAULT
    layouts: collections.Counter[str] = collections.Counter()
    ops: collections.Counter[str] = collections.Counter()
    for i in range(count):
        case = random_case(seed, i, config)
        layouts[case.sender_layout()] += 1
        ops.update({e.op for e in case.events})
        ops.update({s.op for inv in case.program for s in inv.steps})
        try:
            write_atomic(out_dir / f"seed{seed}-case{i}.json", case.to_json() + "\n")
        except OSError as e:
            raise BadInput(f"{out_dir}: cannot write case {i}: {e.strerror}") from None
    click.echo(f"wrote {count} case(s) to {out_dir}/ (seed{seed}-case0.json ... seed{seed}-case{count - 1}.json)")
    click.echo("sender threads: " + ", ".join(f"{name} {layouts[name]}" for name in ("own", "one", "shared")))
    click.echo("cases using: " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
