"""The two kernel backends agree: generated cases give identical outcomes on the interpreter
program (kernel_runner/interp_backend.py) and on per-case bcc-compiled C
(kernel_runner/bcc_backend.py), compared with diffuzz.engine.compare.compare, every field.

If they differ, one of the two programs does not do what docs/execution.md says a program
run does, and every finding that rests on it is suspect.  Both sides here are the real
kernel, so windows (data_end - data) are compared too: the bcc outcome stands in the
"model" seat of compare() and carries concrete windows, never None.

One thing is not the backends' to agree on: bytes inserted by bpf_msg_push_data are
uninitialised kernel memory (spec §6.5), different on every run.  The model (sim) knows which
delivered bytes those are, so the bcc outcome takes the model's unknown ranges where the model
delivers the same number of bytes: compare() then applies its own rule for unknown bytes
(diffuzz/engine/compare.py MASKS), and every other byte is compared exactly.

Cost: bcc compiles each distinct program once per worker (about 0.35 s), so the cases are
built from DONORS generated cases, each run in VARIANTS forms that share its program text
(the other address family, and the first half of its events).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import pytest

from diffuzz.contract.case import STEP_TYPES, Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import compare
from diffuzz.engine.generate import random_case
from diffuzz.engine.oracle import with_model_unknowns
from diffuzz.engine.probes import ProfileChoice
from kernel_runner.c_codegen import bcc_source
from kernel_runner.pool import KernelPool, is_error
from sim.syscalls import run as model_run

pytestmark = pytest.mark.kernel

SEED = 20260
DONORS = 60
VARIANTS = 4  # {ipv4, ipv6} x {all events, first half}


def _cases() -> list[Case]:
    out: list[Case] = []
    for i in range(DONORS):
        donor = random_case(SEED, i)
        half = donor.events[: max(1, len(donor.events) // 2)]
        for family in ("ipv4", "ipv6"):
            for events in (donor.events, half):
                out.append(replace(donor, family=family, events=events,
                                   name=f"agree seed {SEED} case {i} {family} {len(events)} events"))
    return out


def _outcomes(backend: str, cases: list[Case]) -> Iterator[Outcome]:
    with KernelPool(jobs=2, backend=backend, deadline=60.0) as pool:
        yield from pool.imap(cases)


def test_interp_and_bcc_give_identical_outcomes(kernel_profile: ProfileChoice) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_BPF, CAP_NET_ADMIN) to load programs and unshare a network namespace")
    cases = _cases()
    assert len(cases) == DONORS * VARIANTS >= 200
    # The claim is about every step kind: make sure the cases reach each one.
    reached = {type(s).op for c in cases for inv in c.program for s in inv.steps}
    assert reached == set(STEP_TYPES), f"step kinds never generated: {set(STEP_TYPES) - reached}"
    assert len({bcc_source(c) for c in cases}) <= DONORS  # the variants share their program text

    interp = list(_outcomes("interp", cases))
    bcc = list(_outcomes("bcc", cases))

    problems: list[str] = []
    for case, a, b in zip(cases, interp, bcc, strict=True):
        failed = [f"{case.name}: {side} backend did not run it: {dict(out.notes)}"
                  for side, out in (("interp", a), ("bcc", b)) if is_error(out) or out.hang]
        if failed:
            problems += failed
            continue
        diffs = compare(a, with_model_unknowns(b, model_run(case, kernel_profile.profile)))
        if diffs:
            shown = "; ".join(f"{d.path}: interp {d.kernel!r} bcc {d.model!r}" for d in diffs[:5])
            problems.append(f"{case.name}: {len(diffs)} differences: {shown}\n  case: {case.to_json(None)}")
    assert not problems, f"{len(problems)} of {len(cases)} cases disagree:\n" + "\n".join(problems[:10])
