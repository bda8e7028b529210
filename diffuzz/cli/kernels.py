"""`diffuzz kernels` (list, fetch) and `diffuzz matrix` (registered by diffuzz/cli/commands.py).

    diffuzz kernels [--json]           host and every VM kernel: fetched?, release, probed profile
    diffuzz kernels fetch NAME...      apt-get download + dpkg -x into the cache, then boot and probe
    diffuzz matrix CASES... [--kernels host,vm:6.1,...] [--json]

The matrix's logic is diffuzz/engine/matrix.py; here the pools are built (one kernel at a time,
so VMs never compete with each other for the two cores) and the table printed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
from rich.table import Table

from diffuzz.cli.common import (
    BadInput,
    Unusable,
    check_kernel,
    choose_profile,
    kernel_label,
    load_or_fail,
    remember_profile,
)


def _catalog() -> Any:
    try:
        from kernel_runner.vm import catalog
    except ImportError as e:
        raise Unusable(f"the VM side is not available: {e}") from None
    return catalog


def _open_pool(kernel: str, jobs: int, deadline: float = 10.0) -> Any:
    from kernel_runner.backend import KernelUnsupported
    from kernel_runner.pool import KernelPool

    try:
        return KernelPool(jobs=jobs, backend="interp", deadline=deadline, kernel=kernel)
    except KernelUnsupported as e:
        raise Unusable(f"kernel side ({kernel_label(kernel, 'interp')}): {e}") from None


@click.group("kernels", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per kernel.")
@click.pass_context
def kernels(ctx: click.Context, as_json: bool) -> int:
    """The kernels cases can run on: this host's, and Debian's cloud kernels in qemu VMs
    (--kernel vm:NAME).  A VM kernel's profile is the one its probes chose the last time a
    command booted it (fetch does)."""
    if ctx.invoked_subcommand is not None:
        return 0
    catalog = _catalog()
    from kernel_runner import local

    rows: list[dict[str, Any]] = []
    try:
        host = choose_profile(None, lambda c: local.run(c))
        rows.append({"kernel": "host", "fetched": True, "release": os.uname().release,
                     "profile": host.profile.name, "how": host.how(), "what": "this machine's kernel"})
    except Exception as e:  # no BPF, not root: the listing still shows the VMs
        rows.append({"kernel": "host", "fetched": True, "release": os.uname().release, "profile": None,
                     "how": f"cannot probe: {e}", "what": "this machine's kernel"})
    for name, spec in catalog.KERNELS.items():
        k = catalog.fetched(name)
        saved = catalog.saved_profile(name) if k else None
        rows.append({"kernel": f"vm:{name}", "fetched": k is not None, "release": k.release if k else None,
                     "version": k.version if k else None, "profile": saved.get("name") if saved else None,
                     "how": saved.get("how") if saved else ("not probed yet" if k else
                                                            f"not fetched: diffuzz kernels fetch {name}"),
                     "what": spec.what})
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        return 0
    table = Table("kernel", "release", "profile", "how", "what", box=None)
    for r in rows:
        table.add_row(r["kernel"], r["release"] or "-", r["profile"] or "-", r["how"], r["what"])
    _console().print(table)
    return 0


@kernels.command("fetch")
@click.argument("names", nargs=-1, required=True)
@click.option("--refresh", is_flag=True, help="Read Debian's package lists again and refetch.")
@click.option("--no-probe", is_flag=True, help="Do not boot the kernel to probe its profile.")
def fetch(names: tuple[str, ...], refresh: bool, no_probe: bool) -> int:
    """Fetch VM kernels NAME... (6.1, 6.12, 7.2; `all` for every one) into the cache, build the
    guest image, boot it once and probe its behaviour profile."""
    catalog = _catalog()
    wanted = list(catalog.KERNELS) if names == ("all",) else [n.removeprefix("vm:") for n in names]
    for n in wanted:
        if n not in catalog.KERNELS:
            raise BadInput(f"unknown VM kernel {n!r}; known: {', '.join(catalog.KERNELS)}")
    for n in wanted:
        try:
            k = catalog.fetch(n, progress=lambda m: click.echo(f"diffuzz kernels: {m}", err=True), refresh=refresh)
        except catalog.VmError as e:
            raise Unusable(str(e)) from None
        if no_probe:
            continue
        start = time.monotonic()
        pool = _open_pool(f"vm:{n}", 1)
        try:
            choice = choose_profile(None, pool.run)
        finally:
            pool.close()
        remember_profile(f"vm:{n}", choice)
        click.echo(f"vm:{n}: {k.release} ({k.package} {k.version}): {choice.line()} "
                   f"[booted and probed in {time.monotonic() - start:.1f} s]")
    return 0


@click.command("matrix")
@click.argument("cases", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--kernels", "kernel_list", default=None, metavar="K1,K2,...",
              help="Kernels to run on (default: host and every fetched VM kernel).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Workers (VMs) per kernel (default: cores).")
@click.option("--json", "as_json", is_flag=True, help="The whole matrix as one JSON object.")
def matrix(cases: tuple[str, ...], kernel_list: str | None, jobs: int | None, as_json: bool) -> int:
    """Run every CASE on every kernel: per kernel, agree / differ with the model under that kernel's
    probed profile / broken promise (or kernel-only for a case the model does not predict, error,
    hang, crash); per case, which kernels gave the same outcome and whether the profiles explain
    the split (a split on a kernel-only case is the kernels' own: UNEXPLAINED).  Exit 0 when every
    kernel agrees with the model on every case, 1 otherwise, 2 for bad input or a kernel that cannot
    run.

    \b
    Examples:
      diffuzz matrix corpus/seeds/*.json --kernels host,vm:6.1,vm:6.12,vm:7.2
      diffuzz matrix corpus/kernel-bugs/*.json --json
    """
    from diffuzz.engine import matrix as m

    catalog = _catalog()
    loaded = [(path, load_or_fail(path)) for path in cases]
    if kernel_list is None:
        names = ["host"] + [f"vm:{n}" for n in catalog.KERNELS if catalog.fetched(n)]
    else:
        names = [k.strip() for k in kernel_list.split(",") if k.strip()]
    for k in names:
        check_kernel(k)
    workers = jobs or min(os.cpu_count() or 1, max(1, len(loaded)))
    columns = []
    for k in names:
        start = time.monotonic()
        pool = _open_pool(k, workers)
        try:
            choice = choose_profile(None, pool.run)
            remember_profile(k, choice)
            column = m.run_column(k, pool.kernel_release, choice, loaded, pool.imap(c for _p, c in loaded))
        finally:
            pool.close()
        columns.append(column)
        click.echo(f"diffuzz matrix: {k} ({pool.kernel_release}): {choice.line()}; {len(loaded)} cases in "
                   f"{time.monotonic() - start:.1f} s", err=True)
    rows = m.assemble(loaded, columns)
    cols = [c for c, _cells in columns]
    result = m.to_dict(cols, rows)
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        _print(cols, rows, result["summary"])
    clean = all(c.status in (m.AGREE, m.KERNEL_ONLY) for r in rows for c in r.cells.values())
    errors = any(c.status == m.ERROR for r in rows for c in r.cells.values())
    return 2 if errors else 0 if clean else 1


def _console() -> Any:
    """stdout; a wide table when not a terminal (a log, a doc), so a row stays one line."""
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console(highlight=False)
    return Console(highlight=False, width=200)


def _short(name: str) -> str:
    return name.removeprefix("vm:")


def _print(cols: list[Any], rows: list[Any], summary: dict[str, Any]) -> None:
    con = _console()
    table = Table("case", *[_short(c.name) for c in cols], "kernels alike", "told apart by", box=None, pad_edge=False)
    style = {"agree": "green", "kernel-only": "cyan", "differ": "red", "broken": "bold red", "error": "yellow",
             "hang": "magenta", "crash": "bold magenta"}
    for r in rows:
        cells = []
        for c in cols:
            cell = r.cells[c.name]
            kinds = ",".join(k.removeprefix("invariant.") for k in cell.kinds[:2])
            text = cell.status + (f" {kinds}" if kinds else "") + ("" if cell.predicted or cell.status == "agree"
                                                                  else " (unpredicted)")
            cells.append(f"[{style[cell.status]}]{text}[/]")
        alike = "all" if len(r.groups) <= 1 else " | ".join(",".join(map(_short, g)) for g in r.groups)
        apart = "" if len(r.groups) <= 1 else ", ".join(r.split_by) if r.explained else "[bold red]UNEXPLAINED[/]"
        table.add_row(os.path.splitext(os.path.basename(r.case))[0], *cells, alike, apart)
    con.print(table)
    for c in cols:
        counts = ", ".join(f"{v} {s}" for s, v in summary["per_kernel"][c.name].items() if v)
        con.print(f"{c.name} ({c.release}): profile {c.choice.profile.name} ({c.choice.how()}): {counts}")
    con.print(f"{summary['cases']} cases; kernels split on {summary['kernels_split']} "
              f"({summary['split_unexplained']} not explained by the profiles)")
    sys.stdout.flush()
