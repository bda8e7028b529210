"""Options several commands share (diffuzz/cli/commands.py, diffuzz/cli/fuzz.py), defined once."""

from __future__ import annotations

import click

# --kernel-profile: the model's kernel profile instead of the probed one (diffuzz/engine/probes.py).
profile_option = click.option(
    "--kernel-profile", "kernel_profile", metavar="NAME", default=None,
    help="The model's kernel profile (sim/profile.py) instead of the one this kernel's probes choose; "
         "`diffuzz doctor` shows the probes.",
)
