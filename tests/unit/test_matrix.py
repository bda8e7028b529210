"""diffuzz/engine/matrix.py: cells per kernel, groups across kernels, and what explains a split.
The "kernels" here are the model under two profiles, so the test needs no VM."""

from __future__ import annotations

from pathlib import Path

import sim
from diffuzz.contract.case import load_case
from diffuzz.engine import matrix
from diffuzz.engine.probes import choose_profile, run_probes
from sim.profile import PROFILES

SEEDS = Path(__file__).resolve().parents[2] / "corpus" / "seeds"


def _column(name: str, profile: str, cases: list) -> tuple:
    p = PROFILES[profile]
    choice = choose_profile(run_probes(lambda c: sim.run(c, p)))
    return matrix.run_column(name, profile, choice, cases, [sim.run(c, p) for _path, c in cases])


def test_a_split_the_profiles_predict_is_explained_and_named() -> None:
    names = ("W12_read_order_ingress_fionread.json", "../kernel-bugs/K4_partial_push_then_coalesce_send_returns_0.json")
    cases = [(str(SEEDS / f), load_case(SEEDS / f)) for f in names]
    cols = [_column("a", "6.18.44-v657", cases), _column("b", "6.12.118", cases), _column("c", "7.2.13", cases)]
    fionread, k4 = matrix.assemble(cases, cols)
    # FIONREAD with bytes on both queues: 6.18 counts ingress_msg only, 6.12 and 7.2 add TCP's queue.
    assert fionread.groups == [["a"], ["b", "c"]] and fionread.explained
    assert fionread.split_by == ("fionread_tcp_inq",)
    assert all(c.status == matrix.AGREE for c in fionread.cells.values())
    # K4: only a kernel whose copy returns what it copied returns 0 (a broken promise the model
    # copies on purpose: predicted, so the split is still explained).
    assert ["b"] in k4.groups and k4.explained and "memcopy_returns_copied" in k4.split_by
    assert k4.cells["c"].status == matrix.BROKEN and k4.cells["c"].predicted
    summary = matrix.summary([c for c, _ in cols], [fionread, k4])
    assert summary["kernels_split"] == 2 and summary["split_unexplained"] == 0


def test_a_kernel_the_profile_does_not_predict_differs_and_the_split_is_unexplained() -> None:
    path = SEEDS / "W12_read_order_ingress_fionread.json"
    cases = [(str(path), load_case(path))]
    ref = PROFILES["6.18.44-v657"]
    choice = choose_profile(run_probes(lambda c: sim.run(c, ref)))
    # A "kernel" that behaves like 6.12 while the matrix believes it is the reference.
    wrong = matrix.run_column("b", "?", choice, cases, [sim.run(cases[0][1], PROFILES["6.12.118"])])
    rows = matrix.assemble(cases, [_column("a", "6.18.44-v657", cases), wrong])
    cell = rows[0].cells["b"]
    assert cell.status == matrix.DIFFER and cell.kinds == ("events[*].ret",)  # the FIONREAD event
    assert not cell.predicted
    assert not rows[0].explained
