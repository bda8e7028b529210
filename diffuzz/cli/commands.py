"""The diffuzz command line: run one side, reproduce (both sides + compare), doctor.

Exit codes, for every command:
  0  done, and (reproduce) every case agrees
  1  (reproduce) at least one case differs
  2  bad input (missing file, bad JSON, a field out of range, an unknown option), an
     environment that cannot run the case (not root, no bpf(), no sockmap), or a case the
     kernel side could not run; one line on stderr that names the problem, never a traceback.

The sides are imported lazily: `diffuzz --help` and the model side work on a machine with
no BPF at all, and the kernel side is only loaded when asked for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass, replace
from typing import Any

import click

from diffuzz.cli.common import (
    BACKENDS,
    CaseFailed,
    Unusable,
    choose_profile,
    kernel_option,
    load_or_fail,
    model_runner,
    one_line,
    profile_option,
    remember_profile,
    run_kernel,
)
from diffuzz.cli.generate import generate as generate_command

SIDES = ("kernel", "model")


# click >= 8.2 raises this for a bare `diffuzz` (no_args_is_help); older clicks print the help and exit 0.
_NoArgsIsHelp: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Cli(click.Group):
    """A group whose every failure is one line on stderr with the right exit code.

    click's own usage errors print a usage block; a reader of CI logs and a script calling
    diffuzz both want one line that names the problem, so they are reformatted here, in
    the one place every command goes through (the console script and CliRunner alike).
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        for stream in (sys.stdout, sys.stderr):  # an ASCII-only locale gets \u escapes, not a traceback
            if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
                stream.reconfigure(errors="backslashreplace")
        try:
            rv = super().main(args, prog_name or "diffuzz", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except _NoArgsIsHelp as e:  # bare `diffuzz`: the help is the answer
            click.echo(e.ctx.get_help() if e.ctx else e.format_message())
            code = 0
        except click.ClickException as e:
            click.echo(f"diffuzz: error: {one_line(e.format_message())}", err=True)
            code = e.exit_code
        except click.Abort:
            click.echo("diffuzz: aborted", err=True)
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=_Cli, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffuzz")
def main() -> None:
    """diffuzz: a differential fuzzer for the Linux sk_msg / sockmap send path.

    Every case runs on the real kernel and on a Python reference model of
    net/ipv4/tcp_bpf.c and net/core/skmsg.c; any difference in delivered bytes, send
    return codes, program runs, helper return codes or verdicts is a finding.

    Exit codes: 0 ok / all agree, 1 a case differs, 2 bad input or unusable machine.
    """


def _json_default(value: Any) -> Any:
    """Difference values may be dataclasses (RunContext) or bytes; make them JSON."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# --------------------------------------------------------------------------------------
# Commands

_backend_option = click.option(
    "--backend", type=click.Choice(BACKENDS), default="interp", show_default=True,
    help="Kernel program backend: the fast interpreter program, or per-case C compiled by bcc.",
)


@main.command()
@click.argument("case", type=click.Path(dir_okay=False))
@click.option("--side", type=click.Choice(SIDES), required=True, help="Which side runs the case.")
@click.option("--json", "as_json", is_flag=True, help="Print the Outcome as JSON (docs/case-format.md).")
@_backend_option
@kernel_option
@profile_option
def run(case: str, side: str, as_json: bool, backend: str, kernel: str, kernel_profile: str | None) -> int:
    """Run CASE on one side and print what it observed.  The model runs under --kernel-profile,
    else under the profile this kernel's probes choose (the reference profile without a kernel).

    \b
    Examples:
      diffuzz run corpus/seeds/pass_one_send.json --side model
      diffuzz run corpus/seeds/pass_one_send.json --side kernel --backend bcc --json
      diffuzz run corpus/seeds/pass_one_send.json --side kernel --kernel vm:6.1
    """
    loaded = load_or_fail(case)
    try:
        if side == "kernel":
            outcome = run_kernel(loaded, backend, kernel)
        else:
            outcome = model_runner(_model_profile(kernel_profile, backend, kernel))(loaded)
    except CaseFailed as e:
        raise CaseFailed(f"{case}: {e.message}") from None
    if as_json:
        click.echo(outcome.to_json(indent=1))
        return 0
    from diffuzz.cli import reproduce_view

    reproduce_view.print_run(reproduce_view.console(), case, loaded, outcome)
    return 0


@main.command()
@click.argument("cases", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per case per line: case, agree, differences, kernel, model.")
@click.option("-v", "--verbose", is_flag=True, help="Show the full view for agreeing cases too.")
@_backend_option
@kernel_option
@profile_option
def reproduce(cases: tuple[str, ...], as_json: bool, verbose: bool, backend: str, kernel: str,
              kernel_profile: str | None) -> int:
    """Run each CASE on the kernel and on the model and show where they differ.

    The case is printed as a step list, then both outcomes side by side with the differing
    rows marked, then the kernel's promises each side breaks (diffuzz/engine/invariants.py):
    a broken one makes the case differ (exit 1) even where kernel and model agree.  The model
    runs under the kernel profile the probes choose (or --kernel-profile), named on the first
    line (and in every --json record).  Exit 0 when every case agrees, 1 when
    any differs, 2 for bad input, a machine that cannot run the kernel side, or a case the kernel
    side could not run.

    \b
    Examples:
      diffuzz reproduce corpus/findings/3f2a9c.json
      diffuzz reproduce corpus/seeds/*.json
      diffuzz reproduce corpus/seeds/*.json --kernel vm:6.12
    """
    from diffuzz.engine.expect import model_out_of_scope
    from diffuzz.engine.oracle import judge

    # Read every file first: a typo in the tenth file should not cost nine kernel runs.
    loaded = [(path, load_or_fail(path)) for path in cases]
    show_all = verbose or len(loaded) == 1
    choice = choose_profile(kernel_profile, lambda c: run_kernel(c, backend, kernel))
    remember_profile(kernel, choice)
    run_model = model_runner(choice)
    if not as_json:
        click.echo(f"diffuzz reproduce: {choice.line()}")
    differing = failed = 0
    view: Any = None
    if not as_json:
        from diffuzz.cli import reproduce_view

        view = reproduce_view
        con = view.console()
    for path, case in loaded:
        try:
            k_out = run_kernel(case, backend, kernel)
        except CaseFailed as e:
            # One case the kernel could not run does not stop the others; the exit code says it (2).
            failed += 1
            if as_json:
                click.echo(json.dumps({"case": path, "error": e.message}))
            else:
                click.echo(f"diffuzz: error: {path}: {e.message}", err=True)
            continue
        model = run_model(case)
        v = judge(case, k_out, model)
        known = list(model.notes.get("kernel_bugs", ()))
        # A case that says the model does not predict it (meta.model_scope "kernel-only: ...", e.g.
        # TCP back-pressure) is judged on the kernel's promises alone.
        scope = model_out_of_scope(case)
        if scope and not v.kernel_broken:
            v = replace(v, differences=(), kinds=frozenset())
        differing += bool(v.kinds)
        if as_json:
            record = {
                "case": path,
                "kernel_profile": choice.profile.name,
                "on": kernel,
                "agree": not v.kinds,
                "model_scope": scope,
                "differences": [{"path": d.path, "kernel": d.kernel, "model": d.model} for d in v.differences
                                if not d.path.startswith("invariant.")],
                "broken": {"kernel": [asdict(b) for b in v.kernel_broken],
                           "model": [asdict(b) for b in v.model_broken], "model_copies": known},
                "kernel": k_out.to_dict(),
                "model": model.to_dict(),
            }
            click.echo(json.dumps(record, default=_json_default))
            continue
        if v.kinds or v.model_broken or show_all:
            view.print_reproduce(con, path, case, k_out, model, list(v.differences))
        else:
            view.print_agree_line(con, path, case, k_out, scope)
        if v.kernel_broken or v.model_broken:
            view.print_broken(con, path, v.kernel_broken, v.model_broken, known)
    if not as_json and len(loaded) > 1:
        view.print_summary(con, len(loaded), differing, failed)
    if failed:
        return 2
    return 1 if differing else 0


def _model_profile(forced: str | None, backend: str, kernel: str = "host") -> Any:
    """For the model alone: --kernel-profile as given; else probe this kernel when it can run
    cases, and the reference profile (said on stderr) when it cannot."""
    if forced is not None:
        return choose_profile(forced, None)
    try:
        return choose_profile(None, lambda c: run_kernel(c, backend, kernel))
    except Unusable as e:
        click.echo(f"diffuzz: note: model under the reference kernel profile; the kernel cannot be probed: "
                   f"{one_line(e.format_message())}", err=True)
        return choose_profile(None, None)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as a JSON list.")
@profile_option
def doctor(as_json: bool, kernel_profile: str | None) -> int:
    """Check that this machine can run the kernel side, and say how to fix what is missing.

    The "kernel profile" line names the profile this kernel's probes choose and each probe's
    result.  Exit 0 when everything the main job needs is there, else 2.
    """
    from diffuzz.cli import doctor as checks

    if kernel_profile is not None:
        choose_profile(kernel_profile, None)  # an unknown name is bad input before any probing
    results = checks.run_checks(kernel_profile)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=1))
    else:
        checks.print_checks(results)
    return 0 if checks.main_job_ready(results) else 2


def _add_optional_commands(group: click.Group, module: str, names: Sequence[str]) -> None:
    """Register commands another module defines, when it exists (diffuzz.cli.fuzz: fuzz, minimize).

    A module that is absent adds nothing; a module that exists but fails to import (a missing
    dependency) adds stand-ins that say why, so the rest of the CLI keeps working."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if e.name == module:
            return
        reason = f"{module} cannot be imported: {e}"
        for name in names:
            group.add_command(_unavailable(name, reason), name)
        return
    for name in names:
        cmd = getattr(mod, name, None)
        if isinstance(cmd, click.Command):
            group.add_command(cmd, name)


def _unavailable(name: str, reason: str) -> click.Command:
    def callback(**_: Any) -> None:
        raise Unusable(f"{name}: {reason}")

    return click.Command(name, callback=callback, help=f"(unavailable: {reason})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


_add_optional_commands(main, "diffuzz.cli.fuzz", ("fuzz", "minimize"))
_add_optional_commands(main, "diffuzz.cli.kernels", ("kernels", "matrix"))
_add_optional_commands(main, "diffuzz.cli.triage", ("triage",))
main.add_command(generate_command, "generate")


if __name__ == "__main__":  # python -m diffuzz.cli.commands, where the console script is not installed
    main()
