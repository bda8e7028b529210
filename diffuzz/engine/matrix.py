"""The kernel matrix: every case on every kernel, each kernel against the model under its own
profile, and the kernels against each other.

Two questions per case, kept apart as in syzkaller's syz-verifier:
- per kernel: does it agree with the model under the profile its probes chose, does it keep
  the kernel's promises (diffuzz/engine/invariants.py)?  A verdict: agree, differ, broken
  (a promise broken), or what stopped the run (error, hang, crash);
- across kernels: which kernels gave the same outcome (groups), and is each split explained
  by the profiles: the model under one kernel's profile and under the other's differ the same
  way the kernels do.  A split no profile explains is counted on its own, even where each kernel
  agrees with nothing.

The kernel side comes in as callables (the CLI builds the pools), so the engine does not import
kernel_runner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sim
from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import compare
from diffuzz.engine.expect import model_out_of_scope
from diffuzz.engine.oracle import PREFIX, judge, with_model_unknowns
from diffuzz.engine.probes import ProfileChoice, model_for
from sim.profile import Profile, with_behaviours

AGREE, DIFFER, BROKEN, ERROR, HANG, CRASH = "agree", "differ", "broken", "error", "hang", "crash"
# A case that says the model does not predict it (meta.model_scope, e.g. TCP back-pressure) and whose
# kernel keeps its promises: judged on the kernel alone, and a split there is the kernels' own.
KERNEL_ONLY = "kernel-only"
STATUSES = (AGREE, KERNEL_ONLY, DIFFER, BROKEN, ERROR, HANG, CRASH)


@dataclass(frozen=True)
class KernelColumn:
    """One kernel of the matrix: its name, what it reported, the profile its probes chose."""

    name: str  # host, vm:6.1, ...
    release: str
    choice: ProfileChoice


@dataclass
class Cell:
    status: str
    kinds: tuple[str, ...] = ()  # differing fields and broken promises, folded
    detail: str = ""
    kernel: Outcome | None = None
    model: Outcome | None = None
    predicted: bool = False  # the model's outcome is the kernel's, field for field (a copied bug too)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "kinds": list(self.kinds), "detail": self.detail, "predicted": self.predicted}


@dataclass
class Row:
    case: str
    cells: dict[str, Cell] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)  # kernels with the same outcome
    explained: bool = True  # every split between groups is one the profiles predict
    split_by: tuple[str, ...] = ()  # behaviours whose profiles differ across the split

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "cells": {k: c.to_dict() for k, c in self.cells.items()},
                "kernels_agree": len(self.groups) <= 1, "groups": self.groups,
                "explained_by_profiles": self.explained, "split_by": list(self.split_by)}


def cell(case: Case, kernel: Outcome, model: Outcome) -> Cell:
    if "error" in kernel.notes:
        return Cell(ERROR, detail=str(kernel.notes["error"]).splitlines()[0][:200], kernel=kernel, model=model)
    if "crash" in kernel.notes:
        return Cell(CRASH, detail=str(kernel.notes["crash"])[:200], kernel=kernel, model=model)
    if kernel.hang and not model.hang:
        return Cell(HANG, detail=str(kernel.notes.get("hang", ""))[:200], kernel=kernel, model=model)
    v = judge(case, kernel, model)
    fields = [d for d in v.differences if not d.path.startswith(PREFIX)]
    if v.kernel_broken:
        kinds = tuple(sorted({PREFIX + b.invariant for b in v.kernel_broken}))
        return Cell(BROKEN, kinds, "; ".join(b.detail for b in v.kernel_broken)[:300], kernel, model, not fields)
    scope = model_out_of_scope(case)
    if scope:
        return Cell(KERNEL_ONLY, detail=scope[:200], kernel=kernel, model=model)
    if v.kinds:
        kinds = tuple(sorted({d.kind() for d in v.differences}))
        d = v.differences[0]
        return Cell(DIFFER, kinds, f"{d.path}: kernel {d.kernel!r}, model {d.model!r}"[:300], kernel, model)
    return Cell(AGREE, kernel=kernel, model=model, predicted=not fields)


def run_column(name: str, release: str, choice: ProfileChoice, cases: Sequence[tuple[str, Case]],
               kernel_outcomes: Iterable[Outcome]) -> tuple[KernelColumn, list[Cell]]:
    """One kernel's cells: its outcomes (in case order) judged against the model under its profile."""
    model = model_for(choice)
    cells = [cell(case, k, model(case)) for (_path, case), k in zip(cases, kernel_outcomes, strict=True)]
    return KernelColumn(name, release, choice), cells


def _same_outcome(a: Cell, b: Cell) -> bool:
    """Did two kernels show the same thing?  A run that stopped (error, hang, crash) equals one
    that stopped the same way.  Bytes a kernel never wrote (pushed memory: its model's unknown
    ranges) match anything, each way: compare() takes holes on its second side only."""
    if a.kernel is None or b.kernel is None or a.model is None or b.model is None or \
            {a.status, b.status} & {ERROR, CRASH, HANG}:
        return a.status == b.status
    return not compare(a.kernel, with_model_unknowns(b.kernel, b.model)) and not compare(
        b.kernel, with_model_unknowns(a.kernel, a.model))


def _model_equal(a: Outcome, b: Outcome) -> bool:
    """Two model outcomes alike, unknown ranges included (notes, which name the profile, aside)."""
    return {**a.to_dict(), "notes": {}} == {**b.to_dict(), "notes": {}}


def assemble(cases: Sequence[tuple[str, Case]], columns: list[tuple[KernelColumn, list[Cell]]]) -> list[Row]:
    """The rows: each case's cells, and how the kernels split on it."""
    rows = []
    for i, (path, _case) in enumerate(cases):
        row = Row(path, {col.name: cells[i] for col, cells in columns})
        reps: list[Cell] = []
        for col, cells in columns:
            for g, rep in enumerate(reps):
                if _same_outcome(cells[i], rep):
                    row.groups[g].append(col.name)
                    break
            else:
                reps.append(cells[i])
                row.groups.append([col.name])
        if len(row.groups) > 1:
            # Explained when the model under each kernel's own profile predicts that kernel (a
            # documented bug it copies included): then the profiles' differences split the kernels.
            row.explained = all(cells[i].predicted for _col, cells in columns)
            row.split_by = _deciding(cases[i][1], [col.choice.profile for col, _cells in columns])
        rows.append(row)
    return rows


def _deciding(case: Case, profiles: list[Profile]) -> tuple[str, ...]:
    """The behaviours, among those the kernels' profiles disagree on, that change the model's
    outcome on this case when one profile's value is switched (in any of the profiles): what tells
    the kernels apart here."""
    differ = set().union(*(p.behaviours for p in profiles)) - set.intersection(*(set(p.behaviours) for p in profiles))
    found = set()
    for base in profiles:
        before = sim.run(case, base)
        found |= {b for b in differ - found
                  if not _model_equal(sim.run(case, with_behaviours(base, {b: not base.has(b)})), before)}
    return tuple(sorted(found))


def summary(columns: list[KernelColumn], rows: list[Row]) -> dict[str, Any]:
    per_kernel = {c.name: {s: sum(r.cells[c.name].status == s for r in rows) for s in STATUSES} for c in columns}
    split = [r for r in rows if len(r.groups) > 1]
    return {"cases": len(rows), "per_kernel": per_kernel, "kernels_split": len(split),
            "split_unexplained": sum(not r.explained for r in split)}


def to_dict(columns: list[KernelColumn], rows: list[Row]) -> dict[str, Any]:
    return {
        "kernels": [{"name": c.name, "release": c.release, "profile": c.choice.profile.name,
                     "behaviours": sorted(c.choice.profile.behaviours), "how": c.choice.how()} for c in columns],
        "cases": [r.to_dict() for r in rows],
        "summary": summary(columns, rows),
    }


