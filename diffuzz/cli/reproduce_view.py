"""Human-readable views: a Case as a step list, an Outcome as rows, two Outcomes side by side.

The case is printed the way Hypothesis prints a falsifying example: as the calls that
happen, in order, so a kernel developer can rewrite it as a selftest without reading JSON.
The outcomes become rows keyed by the same paths compare.py uses ("events[3]",
"endpoints.p0.rx"), so a Difference marks exactly the rows it is about.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diffuzz.contract.case import (
    BPF_F_INGRESS,
    LAST_RC,
    SK_DROP,
    SK_PASS,
    Case,
    Event,
    Invocation,
    Redirect,
    Step,
    Write,
)
from diffuzz.contract.outcome import Data, Outcome, Run
from diffuzz.engine.compare import Difference

DATA_LIMIT = 48  # bytes of rx/recv data shown in a row; the differences list says where they part


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """`diffuzz reproduce ... | head`: stop quietly with 128 + SIGPIPE, not rich's 1 (which means "differ")."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141)


def console() -> Console:
    """stdout; 120 columns when not a terminal so CI logs keep the table readable."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return _Console(highlight=False)
    return _Console(highlight=False, width=120)


# --------------------------------------------------------------------------------------
# The case as a step list


def verdict_name(verdict: int | str) -> str:
    if verdict == LAST_RC:
        return "last_rc"
    return {SK_PASS: "PASS", SK_DROP: "DROP"}.get(verdict, str(verdict))  # type: ignore[arg-type]


def describe_step(step: Step) -> str:
    if isinstance(step, Write):
        return f"write(offset={step.offset}, {step.data.hex()})"
    if isinstance(step, Redirect):
        flags = "BPF_F_INGRESS" if step.flags == BPF_F_INGRESS else str(step.flags)
        return f"redirect(key={step.key}, flags={flags})"
    args = ", ".join(f"{name}={getattr(step, name)}" for name in step.__dataclass_fields__)
    return f"{step.op}({args})"


def describe_invocation(inv: Invocation) -> str:
    return "; ".join([*(describe_step(s) for s in inv.steps), f"return {verdict_name(inv.verdict)}"])


def describe_event(event: Event) -> str:
    """The call an event makes, e.g. `sendmsg(c0, iov=[1, 2], MSG_MORE)`."""
    op = event.op
    ep = getattr(event, "ep", None)
    parts: list[str] = [ep] if ep else []
    if op in ("send", "sendfile", "splice", "recv"):
        parts.append(str(event.len))  # type: ignore[union-attr]
    if op == "sendmsg":
        parts.append(f"iov={list(event.iov)}")  # type: ignore[union-attr]
    if op in ("map_delete", "map_insert"):
        parts.insert(0, f"key={event.key}")  # type: ignore[union-attr]
    if op == "map_insert" and event.flags:  # type: ignore[union-attr]
        parts.append(f"flags={event.flags}")  # type: ignore[union-attr]
    if op == "shutdown":
        parts.append(event.how)  # type: ignore[union-attr]
    if op == "recv" and event.peek:  # type: ignore[union-attr]
        parts.append("MSG_PEEK")
    if op == "close" and event.rst:  # type: ignore[union-attr]
        parts.append("rst")
    parts.extend(getattr(event, "flags", ()) if op != "map_insert" else ())
    thread = getattr(event, "thread", None)
    return f"{op}({', '.join(parts)})" + (f" on thread {thread}" if thread is not None else "")


def case_lines(path: str, case: Case) -> list[str]:
    """The case as the calls it makes, in order."""
    title = f"Case {path}" + (f" — {case.name}" if case.name else "")
    pairs = ", ".join(f"c{i}↔p{i}" for i in range(case.pairs))
    lines = [
        title,
        f"  {case.family}, {case.pairs} pair{'s' if case.pairs > 1 else ''} ({pairs}), {case.map.type} "
        f"of {case.map.size}, {case.payload.pattern} payload (seed {case.payload.seed}), "
        + (("named sender threads, a fresh one for each other send" if case.shared_threads else
            "a fresh thread per send") if case.fresh_thread else "sends on the worker thread"),
    ]
    for o in case.sockopts:
        bufs = ", ".join(f"{k}={v}" for k, v in (("SO_SNDBUF", o.sndbuf), ("SO_RCVBUF", o.rcvbuf)) if v is not None)
        lines.append(f"  setsockopt({o.ep}, {bufs})")
    lines.append("  attach the SK_MSG program to the map")
    for i, entry in enumerate(case.inserts):
        lines.append(f"  inserts[{i}]: map[{entry.key}] = {entry.ep}")
    lines.append("  program:")
    last = len(case.program) - 1
    for i, inv in enumerate(case.program):
        label = f"run {i}+" if i == last and last > 0 else ("every run" if last == 0 else f"run {i}")
        lines.append(f"    {label:<10} {describe_invocation(inv)}")
    lines.append("  events:" if case.events else "  events: none")
    for i, event in enumerate(case.events):
        lines.append(f"    [{i}] {describe_event(event)}")
    return lines


# --------------------------------------------------------------------------------------
# Outcome rows


def show_data(d: Data | None, limit: int = DATA_LIMIT) -> str:
    """Bytes as text the way a C programmer reads them: printable ASCII as is, the rest as \\xNN, an
    undefined byte (a model wildcard) as "?".  A real "?", '"' or backslash is escaped (\\x3f, \\x22,
    \\x5c) so nothing is ambiguous."""
    if d is None:
        return "-"
    known = d.known_mask()
    shown = "".join(
        "?" if not k else chr(b) if 32 <= b < 127 and b not in (0x22, 0x3F, 0x5C) else f"\\x{b:02x}"
        for b, k in zip(d.raw[:limit], known[:limit], strict=True)
    )
    more = "…" if len(d) > limit else ""
    return f'"{shown}{more}" ({len(d)} B)' if len(d) else '""'


def first_mismatch(k: Data, m: Data) -> int | None:
    """The first byte offset where k and m disagree (an unknown byte in m agrees with anything)."""
    known = m.known_mask()
    for i in range(min(len(k), len(m))):
        if known[i] and k.raw[i] != m.raw[i]:
            return i
    return None if len(k) == len(m) else min(len(k), len(m))


@dataclass(frozen=True)
class Row:
    label: str
    text: str
    paths: tuple[str, ...]  # compare.py paths this row shows


def _run_text(case: Case, index: int, run: Run) -> str:
    inv = case.invocation(index)
    steps = []
    for step, rec in zip(inv.steps, run.steps, strict=False):
        win = "" if rec.win is None else f" win {rec.win}"
        steps.append(f"{step.op}→{rec.rc}{win}")
    steps += [f"?→{rec.rc}" for rec in run.steps[len(inv.steps):]]  # more records than steps: show them
    win_in = "" if run.win_in is None else f" win {run.win_in}"
    task = f"#{run.ctx.task}" if isinstance(run.ctx.task, int) else run.ctx.task
    fam = {2: "ipv4", 10: "ipv6"}.get(run.ctx.family, str(run.ctx.family))
    return (f"{run.ep} size {run.size_in}{win_in} | {'; '.join(steps) or 'no steps'} | size {run.size_out} "
            f"| {verdict_name(run.verdict)} | {fam} {run.ctx.local}→{run.ctx.remote} task {task}")


def _ret_text(ret: int | str | None) -> str:
    return "-" if ret is None else str(ret)


def outcome_rows(case: Case, o: Outcome) -> list[Row]:
    rows: list[Row] = []
    if o.hang:
        rows.append(Row("hang", "HANG (killed at its deadline)", ("hang",)))
    for i, ret in enumerate(o.inserts):
        rows.append(Row(f"inserts[{i}]", _ret_text(ret), (f"inserts[{i}]",)))
    for i, res in enumerate(o.events):
        label = f"[{i}] {describe_event(case.events[i])}" if i < len(case.events) else f"[{i}]"
        text = _ret_text(res.ret) + (" SIGPIPE" if res.sigpipe else "")
        if res.data is not None:
            text += f" {show_data(res.data)}"
        rows.append(Row(label, text, (f"events[{i}]",)))
    rows.append(Row("run_count", str(o.run_count), ("run_count",)))
    for i, run in enumerate(o.runs):
        rows.append(Row(f"runs[{i}]", _run_text(case, i, run), (f"runs[{i}]",)))
    for name, ep in o.endpoints.items():
        base = f"endpoints.{name}"
        rows.append(Row(f"{name} rx", show_data(ep.rx), (f"{base}.rx",)))
        fion = "-" if ep.fionread is None else str(ep.fionread)
        rows.append(Row(f"{name} end", f"fionread {fion}, {ep.end}", (f"{base}.fionread", f"{base}.end")))
    return rows


def _touches(diff_path: str, row_path: str) -> bool:
    """A difference marks a row when one path lies inside the other (runs[2] ~ runs[2].steps[0].rc)."""
    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or a.startswith(b + "[")

    return inside(diff_path, row_path) or inside(row_path, diff_path)


def _marked(row: Row, diffs: Sequence[Difference]) -> bool:
    return any(_touches(d.path, p) for d in diffs for p in row.paths)


# --------------------------------------------------------------------------------------
# Printing


def print_case(con: Console, path: str, case: Case) -> None:
    lines = case_lines(path, case)
    con.print(Text(lines[0], style="bold"))
    for line in lines[1:]:
        con.print(Text(line))


def print_run(con: Console, path: str, case: Case, outcome: Outcome) -> None:
    """`diffuzz run`: the case, then one side's outcome as rows."""
    print_case(con, path, case)
    table = Table(title=f"{outcome.side} side", title_justify="left", show_lines=False)
    table.add_column("observable", no_wrap=True)
    table.add_column(outcome.side, overflow="fold")
    for row in outcome_rows(case, outcome):
        table.add_row(Text(row.label), Text(row.text))
    con.print(table)
    _print_notes(con, [outcome])


def print_reproduce(con: Console, path: str, case: Case, kernel: Outcome, model: Outcome,
                    diffs: Sequence[Difference]) -> None:
    """`diffuzz reproduce`: the case, both outcomes side by side with differing rows marked (≠)."""
    print_case(con, path, case)
    table = Table(show_lines=False)
    table.add_column("", no_wrap=True, width=1)
    table.add_column("observable", no_wrap=True)
    table.add_column("kernel", overflow="fold", ratio=1)
    table.add_column("model", overflow="fold", ratio=1)
    for label, k_row, m_row in _paired(outcome_rows(case, kernel), outcome_rows(case, model)):
        row = k_row or m_row
        assert row is not None
        differs = k_row is None or m_row is None or _marked(row, diffs)
        style = "bold red" if differs else ""
        table.add_row(Text("≠" if differs else ""), Text(label),
                      Text(k_row.text if k_row else "—", style=style),
                      Text(m_row.text if m_row else "—", style=style))
    con.print(table)
    _print_notes(con, [kernel, model])
    if not diffs:
        con.print(Text(f"AGREE: {path}", style="bold green"))
        return
    diffs = [d for d in diffs if not d.path.startswith("invariant.")]  # print_broken shows those
    if not diffs:
        return
    con.print(Text(f"DIFFER: {path}: {len(diffs)} difference{'s' if len(diffs) > 1 else ''}", style="bold red"))
    for line in difference_lines(diffs, kernel, model):
        con.print(Text(f"  {line}"))


def difference_lines(diffs: Iterable[Difference], kernel: Outcome, model: Outcome) -> list[str]:
    """One line per difference; for byte streams, where they first part."""
    lines = []
    for d in diffs:
        line = f"{d.path}: kernel {_short(d.kernel)} ≠ model {_short(d.model)}"
        k_data, m_data = _data_at(kernel, d.path), _data_at(model, d.path)
        if k_data is not None and m_data is not None:
            at = first_mismatch(k_data, m_data)
            if at is not None:
                line = (f"{d.path}: kernel {len(k_data)} B, model {len(m_data)} B, first difference at byte {at}: "
                        f"kernel {show_data(_slice(k_data, at), 16)} ≠ model {show_data(_slice(m_data, at), 16)}")
        lines.append(line)
    return lines


def _short(value: object, limit: int = 80) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _slice(d: Data, start: int) -> Data:
    raw = d.raw[start:]
    unknown = tuple((max(s, start) - start, e - start) for s, e in d.unknown if e > start)
    return Data(raw, unknown)


def _data_at(o: Outcome, path: str) -> Data | None:
    """The Data a difference path names (endpoints.X.rx or events[i].data), if any."""
    if path.startswith("endpoints.") and path.endswith(".rx"):
        ep = o.endpoints.get(path[len("endpoints."):-len(".rx")])
        return ep.rx if ep else None
    if path.startswith("events[") and path.endswith("].data"):
        i = int(path[len("events["):-len("].data")])
        return o.events[i].data if i < len(o.events) else None
    return None


def _paired(ks: list[Row], ms: list[Row]) -> list[tuple[str, Row | None, Row | None]]:
    """Rows of both sides aligned by their first path, in the order they appear."""
    k_by = {r.paths[0]: r for r in ks}
    m_by = {r.paths[0]: r for r in ms}
    order: list[str] = []
    for r in [*ks, *ms]:
        if r.paths[0] not in order:
            order.append(r.paths[0])
    # Keep the natural section order when one side has extra rows (more events or runs).
    section = {"hang": 0, "inserts": 1, "events": 2, "run_count": 3, "runs": 4, "endpoints": 5}
    order.sort(key=lambda p: section.get(p.split("[")[0].split(".")[0], 9))
    return [((k_by.get(p) or m_by[p]).label, k_by.get(p), m_by.get(p)) for p in order]


def _print_notes(con: Console, outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        if o.notes:
            notes = ", ".join(f"{k}={v}" for k, v in o.notes.items())
            con.print(Text(f"  {o.side} notes (not compared): {notes}", style="dim"))


def print_broken(con: Console, path: str, kernel: Sequence[Any], model: Sequence[Any],
                 known: Sequence[str]) -> None:
    """The promises each side breaks (diffuzz/engine/invariants.py), by name, with what shows it.
    A kernel breach is a finding even where the model agrees; a model breach names the kernel bug
    it copies (known), or is a model bug."""
    for b in kernel:
        con.print(Text(f"BROKEN (kernel): {path}: {b.invariant}: {b.detail}", style="bold red"))
    for b in model:
        con.print(Text(f"BROKEN (model, a model bug): {path}: {b.invariant}: {b.detail}", style="bold magenta"))
    if known:
        con.print(Text(f"  the model copies documented kernel bug{'s' * (len(known) > 1)} {', '.join(known)} "
                       f"(docs/kernel-notes.md)", style="yellow"))


def print_agree_line(con: Console, path: str, case: Case, kernel: Outcome, scope: str | None = None) -> None:
    events, runs = len(case.events), kernel.run_count
    size = f"{events} event{'s' * (events != 1)}, {runs} run{'s' * (runs != 1)}"
    if scope:  # meta.model_scope: only the kernel's promises were checked
        con.print(Text(f"KERNEL ONLY: {path} ({size}; the model does not predict it: {scope})", style="yellow"))
        return
    con.print(Text(f"AGREE: {path} ({size})", style="green"))


def print_summary(con: Console, total: int, differing: int, failed: int = 0) -> None:
    agree = total - differing - failed
    style = "bold red" if differing or failed else "bold green"
    text = f"{total} cases: {agree} agree, {differing} differ"
    con.print(Text(text + (f", {failed} could not run on the kernel" if failed else ""), style=style))
