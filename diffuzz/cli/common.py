"""What the commands share (diffuzz/cli/commands.py, fuzz.py, fuzz_target.py): the exit-2 errors,
loading a case, running the kernel side, choosing the kernel profile and the model under it, and
the options several commands take.  The sides are imported lazily, when a command runs.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import click

from diffuzz.contract.case import Case, CaseError, load_case
from diffuzz.contract.outcome import Outcome

BACKENDS = ("interp", "bcc")

# Errors from the kernel side that mean "this machine or process cannot do it", not a bug.
_UNUSABLE_ERRNOS = {errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EOPNOTSUPP}


class BadInput(click.ClickException):
    """A case file or argument diffuzz cannot use; exit 2."""

    exit_code = 2


class Unusable(click.ClickException):
    """The environment cannot run the requested side (not root, no BPF, missing piece); exit 2."""

    exit_code = 2


class CaseFailed(Unusable):
    """The kernel side could not run one case (its worker raised or died: an error outcome,
    kernel_runner.pool.is_error); that case observed nothing, so it is not compared.  Exit 2."""


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


# --------------------------------------------------------------------------------------
# Running the two sides (imported lazily).


def load_or_fail(path: str) -> Case:
    try:
        return load_case(path)
    except CaseError as e:
        raise BadInput(str(e)) from None


def model_runner(choice: Any) -> Callable[[Case], Outcome]:
    """sim.run under the chosen profile (diffuzz.engine.probes.ProfileChoice), imported lazily;
    Unusable with the reason when the model cannot be loaded."""
    try:
        from diffuzz.engine.probes import model_for
    except ImportError as e:
        raise Unusable(f"the model is not available: {e}") from None
    return model_for(choice)


def choose_profile(forced: str | None, kernel: Callable[[Case], Outcome] | None) -> Any:
    """The ProfileChoice: the kernel probed when one is given (diffuzz/engine/probes.py), --kernel-profile
    honoured; an unknown profile name is bad input."""
    from diffuzz.engine.probes import choose_profile as choose
    from diffuzz.engine.probes import probe_and_choose
    from sim.profile import UnknownProfile

    try:
        return probe_and_choose(kernel, forced) if kernel is not None else choose((), forced)
    except UnknownProfile as e:
        raise BadInput(str(e)) from None


def run_kernel(case: Case, backend: str, kernel: str = "host") -> Outcome:
    """kernel_runner.local.run, with every 'this machine cannot' failure turned into Unusable."""
    try:
        from kernel_runner.backend import KernelUnsupported
    except ImportError as e:
        raise Unusable(f"the kernel side is not available: {e}") from None
    if kernel != "host" and backend != "interp":
        raise BadInput(f"--backend {backend} runs on the host kernel only (a guest has the interpreter program, "
                       "no bcc); use --backend interp with --kernel vm:NAME")
    try:
        from kernel_runner import local
    except ImportError as e:
        raise Unusable(f"the kernel side is not available: {e}") from None
    try:
        outcome = local.run(case, backend=backend, kernel=kernel)
    except KernelUnsupported as e:
        raise Unusable(f"kernel side ({kernel_label(kernel, backend)}): {e}") from None
    except OSError as e:
        if e.errno in _UNUSABLE_ERRNOS:
            raise Unusable(f"kernel side ({kernel_label(kernel, backend)}): {e}; run `diffuzz doctor` to see "
                           "what is missing") from None
        raise
    if "error" in outcome.notes:
        error = one_line(str(outcome.notes["error"]))
        raise CaseFailed(f"the kernel side ({kernel_label(kernel, backend)}) could not run the case: {error}")
    return outcome


def kernel_label(kernel: str, backend: str) -> str:
    return backend if kernel == "host" else f"{kernel}, {backend}"


def check_kernel(value: str) -> str:
    """host, or vm:NAME with NAME a kernel kernel_runner/vm/catalog.py knows (fetched or not: using
    one that is not fetched says how to fetch it); BadInput otherwise."""
    if value == "host":
        return value
    from kernel_runner.vm.catalog import KERNELS

    name = value[len("vm:"):] if value.startswith("vm:") else None
    if name not in KERNELS:
        raise BadInput(f"kernel {value!r}: use host or one of {', '.join('vm:' + k for k in KERNELS)} "
                       "(diffuzz kernels lists them)")
    return value


def _check_kernel(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_kernel(value)
    except BadInput as e:
        raise click.BadParameter(e.message) from None


def remember_profile(kernel: str, choice: Any) -> None:
    """Keep a VM kernel's probed profile beside it, for `diffuzz kernels` (the host is probed live)."""
    if kernel == "host" or not choice.probes or choice.forced:
        return
    from kernel_runner.vm.catalog import save_profile

    save_profile(kernel[len("vm:"):], choice.to_dict())


# --kernel: where the kernel side runs (kernel_runner/vm/ for VMs).
kernel_option = click.option(
    "--kernel", "kernel", metavar="host|vm:NAME", default="host", show_default=True, callback=_check_kernel,
    help="The kernel to run on: this host's, or a VM of a fetched kernel (diffuzz kernels; "
         "diffuzz kernels fetch NAME).",
)





# --kernel-profile: the model's kernel profile instead of the probed one (diffuzz/engine/probes.py).
profile_option = click.option(
    "--kernel-profile", "kernel_profile", metavar="NAME", default=None,
    help="The model's kernel profile (sim/profile.py) instead of the one this kernel's probes choose; "
         "`diffuzz doctor` shows the probes.",
)
