"""Campaign quality: bugs planted in the model are found by the fuzz loop and minimized.

Each planted bug is a small, realistic slip in the model (sim/), put in for the duration of
one model call only, so the unmodified model can serve as a reference in the same process:

| bug                 | where (kernel counterpart)                   | what the slip does                      |
|---------------------|----------------------------------------------|-----------------------------------------|
| apply_leftover_lost | sim.tcp_bpf.sk_msg_apply_bytes               | a leftover apply_bytes is dropped, so   |
|                     | (sk_msg_apply_bytes, spec §4.2, W2b)          | the next send runs the program again    |
| pop_to_end_refused  | sim.helpers.bpf_msg_pop_data (§6.6)           | a pop ending exactly at the message end |
|                     |                                              | fails -EINVAL (the pre-6.13 bound)      |
| ingress_flag_lost   | sim.helpers.bpf_msg_redirect (§6.3)           | BPF_F_INGRESS is not kept in msg.flags  |
| drop_not_sticky     | sim.tcp_bpf.tcp_bpf_send_verdict (§4.5, W3)   | a DROP verdict resets to NONE           |
| push_append_refused | sim.helpers.bpf_msg_push_data (§6.5)          | push at start == size fails -EINVAL     |

The delta sign of §4.3 is computed inline in tcp_bpf_send_verdict, with nothing to patch
around it short of copying the function, so "DROP not sticky" stands in for a verdict-loop bug.

Two references:
- `test_found_against_model_reference`: the unmodified model (fast, needs no kernel).  It
  checks the loop itself: generation reaches the bug, the difference is seen, the minimizer
  makes it small.
- `test_found_against_kernel` (@kernel): the real kernel pool, as `diffuzz fuzz` runs it.  A case
  on which the unmodified model already differs from the kernel is skipped (that is an open
  finding, not the planted bug), so this works while the model still has known differences.

`test_engine_saves_a_planted_bug` runs the whole engine (confirm, minimize, bucket, count) on
one planted bug against the model reference.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from diffuzz.contract.case import SEND_TYPES, Case, load_case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import compare
from diffuzz.engine.corpus import Corpus
from diffuzz.engine.function_pool import FunctionPool
from diffuzz.engine.generate import random_case
from diffuzz.engine.loop import Engine, FuzzConfig
from diffuzz.engine.minimize import minimize
from diffuzz.engine.signature import diff_kinds

pytestmark = pytest.mark.quality

MAX_CASES = 4000  # the loop must find each planted bug within this many generated cases
MAX_SENDS = 3
MAX_STEPS = 3


def _sim_run() -> Callable[[Case], Outcome]:
    run: Any = importlib.import_module("sim").__dict__.get("run") or importlib.import_module("sim.run")
    return run.run if isinstance(run, ModuleType) else run


# ---- the planted bugs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Bug:
    name: str
    module: str
    attr: str
    make: Callable[[Any], Any]  # original function -> buggy function


def _apply_leftover_lost(orig: Any) -> Any:
    def sk_msg_apply_bytes(psock: Any, n: int) -> None:
        psock.apply_bytes = 0

    return sk_msg_apply_bytes


def _pop_to_end_refused(orig: Any) -> Any:
    def bpf_msg_pop_data(msg: Any, start: int, ln: int, flags: int) -> int:
        if ln & 0xFFFF_FFFF and (start & 0xFFFF_FFFF) + (ln & 0xFFFF_FFFF) == msg.size:
            return -22
        return orig(msg, start, ln, flags)

    return bpf_msg_pop_data


def _ingress_flag_lost(orig: Any) -> Any:
    def bpf_msg_redirect(world: Any, msg: Any, key: int, flags: int) -> int:
        rc = orig(world, msg, key, flags)
        if rc == 1:
            msg.flags = 0
        return rc

    return bpf_msg_redirect


def _drop_not_sticky(orig: Any) -> Any:
    def tcp_bpf_send_verdict(w: Any, sk: Any, psock: Any, msg: Any, copied: int, flags: int) -> Any:
        out = orig(w, sk, psock, msg, copied, flags)
        if psock.eval == 2:  # SK_DROP_EVAL
            psock.eval = 0  # SK_NONE
        return out

    return tcp_bpf_send_verdict


def _push_append_refused(orig: Any) -> Any:
    def bpf_msg_push_data(msg: Any, start: int, ln: int, flags: int) -> int:
        if ln & 0xFFFF_FFFF and start & 0xFFFF_FFFF == msg.size:
            return -22
        return orig(msg, start, ln, flags)

    return bpf_msg_push_data


BUGS = (
    Bug("apply_leftover_lost", "sim.tcp_bpf", "sk_msg_apply_bytes", _apply_leftover_lost),
    Bug("pop_to_end_refused", "sim.helpers", "bpf_msg_pop_data", _pop_to_end_refused),
    Bug("ingress_flag_lost", "sim.helpers", "bpf_msg_redirect", _ingress_flag_lost),
    Bug("drop_not_sticky", "sim.tcp_bpf", "tcp_bpf_send_verdict", _drop_not_sticky),
    Bug("push_append_refused", "sim.helpers", "bpf_msg_push_data", _push_append_refused),
)


@contextlib.contextmanager
def _planted(bug: Bug) -> Iterator[None]:
    mod = importlib.import_module(bug.module)
    orig = getattr(mod, bug.attr)  # fails loudly if the model renamed the function
    setattr(mod, bug.attr, bug.make(orig))
    try:
        yield
    finally:
        setattr(mod, bug.attr, orig)


def buggy_model(bug: Bug) -> Callable[[Case], Outcome]:
    good = _sim_run()

    def run(case: Case) -> Outcome:
        with _planted(bug):
            return good(case)

    return run


# ---- the hunt: generate until the planted bug shows, then minimize ----------------------------


@dataclass
class Hunt:
    cases: int
    found: Case
    minimized: Case


def hunt(bug: Bug, reference: Any, seed: int = 1) -> Hunt | None:
    """Generate cases until the buggy model differs from the reference where the good model
    agrees with it; then minimize keeping the same differing fields (and the good model's
    agreement, so the minimizer cannot wander onto a pre-existing difference)."""
    good = _sim_run()
    bad = buggy_model(bug)
    batch = 200
    for start in range(0, MAX_CASES, batch):
        cases = [random_case(seed, i) for i in range(start, start + batch)]
        for i, (case, ref) in enumerate(zip(cases, reference.imap(cases), strict=True)):
            if "error" in ref.notes or compare(ref, good(case)):
                continue  # the reference failed, or a known model difference: not our bug
            kinds = diff_kinds(compare(ref, bad(case)))
            if not kinds:
                continue

            def same(c: Case, kinds: frozenset[str] = kinds) -> bool:
                r = reference.run(c)
                return ("error" not in r.notes and not compare(r, good(c))
                        and diff_kinds(compare(r, bad(c))) == kinds)

            small, _ = minimize(case, same, max_seconds=60)
            return Hunt(start + i + 1, case, small)
    return None


def _assert_small(h: Hunt | None, bug: Bug) -> None:
    assert h is not None, f"{bug.name}: not found in {MAX_CASES} cases"
    sends = sum(isinstance(e, SEND_TYPES) for e in h.minimized.events)
    steps = sum(len(inv.steps) for inv in h.minimized.program)
    assert sends <= MAX_SENDS and steps <= MAX_STEPS, (
        f"{bug.name}: found after {h.cases} cases but minimized only to {sends} sends, {steps} steps:\n"
        f"{h.minimized.to_json()}")


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_found_against_model_reference(bug: Bug) -> None:
    _assert_small(hunt(bug, FunctionPool(_sim_run())), bug)


@pytest.fixture(scope="module")
def kernel_pool() -> Iterator[Any]:
    from kernel_runner.pool import KernelPool

    pool = KernelPool(jobs=2, backend="interp", deadline=10.0)
    try:
        yield pool
    finally:
        pool.close()


@pytest.mark.kernel(needs=("interp",))
@pytest.mark.slow
@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_found_against_kernel(bug: Bug, kernel_pool: Any) -> None:
    _assert_small(hunt(bug, kernel_pool), bug)


def test_engine_saves_a_planted_bug(tmp_path: Any) -> None:
    bug = BUGS[3]  # drop_not_sticky
    corpus = Corpus(tmp_path)
    engine = Engine(FuzzConfig(seed=3, cases=1500, batch=100, minimize_seconds=30),
                    FunctionPool(_sim_run()), buggy_model(bug), corpus)
    stats = engine.run()
    assert stats.cases == 1500
    assert stats.findings >= 1 and stats.flaky == 0 and stats.model_errors == 0
    buckets = list(corpus.buckets())
    assert buckets and len(buckets) == len(stats.new_buckets)
    # Each bucket is counted as often as it was met; nothing is saved twice.  (The documented
    # kernel bugs the "kernel" -- the model -- shows are counted in their known.* buckets.)
    counts = sum(int(json.loads((b / "bucket.json").read_text())["count"]) for b in buckets)
    assert counts == stats.findings + stats.known
    # One planted cause, one root (diffuzz/engine/signature.py): the buckets are named by the
    # first difference, and the minimizer keeps only that.  (55 buckets for this run before
    # root-cause buckets; 4 after: the common shape, a variant that needs a map_insert, one that
    # needs an apply_bytes, and the reference's own K1 that the buggy model no longer matches.)
    assert len([b for b in buckets if not b.name.startswith("known.")]) <= 5
    # A *typical* finding is small (the brief's target), so at least 80% of the buckets must be.
    # The known.* buckets hold documented kernel bugs met on the way: counted, never minimized,
    # and not the planted bug's.
    small = 0
    buckets = [b for b in buckets if not b.name.startswith("known.")]
    for b in buckets:
        case = load_case(str(b / "case.json"))
        sends = sum(isinstance(e, SEND_TYPES) for e in case.events)
        small += sends <= MAX_SENDS and sum(len(inv.steps) for inv in case.program) <= MAX_STEPS
    assert small >= 0.8 * len(buckets), f"only {small} of {len(buckets)} buckets are small"


def test_flaky_differences_are_counted_not_saved(tmp_path: Any) -> None:
    good = _sim_run()
    seen: set[Case] = set()

    def first_call_wrong(case: Case) -> Outcome:
        # Differs on the first run of every 5th case only, so the confirmation re-run agrees.
        out = good(case)
        first = case not in seen
        seen.add(case)
        if first and zlib.crc32(repr(case).encode()) % 5 == 0:  # not hash(): the same cases every run
            return Outcome(side="model", inserts=out.inserts, events=out.events, runs=out.runs,
                           run_count=out.run_count + 1, endpoints=out.endpoints)
        return out

    corpus = Corpus(tmp_path)
    stats = Engine(FuzzConfig(seed=4, cases=200, batch=50), FunctionPool(good), first_call_wrong, corpus).run()
    # The only findings are the "kernel's" (here the model's own outcomes) broken promises: the
    # documented kernel bugs the model copies (K1, K3), which the invariants report whatever the
    # model says.  No planted difference is saved.
    # Every mismatch is accounted for: re-run and flaky, a finding, or only counted beside another
    # of its key (triage_skipped).
    assert stats.flaky > 0 and stats.mismatches == stats.flaky + stats.findings + stats.triage_skipped
    assert all(b.name.startswith(("known.", "invariant.")) for b in corpus.buckets())


def test_the_others_of_a_flaky_key_are_counted(tmp_path: Any) -> None:
    # Two mismatches of one key in a batch: the first is triaged and its re-run agrees; the second
    # was only counted beside it.  It is neither flaky nor a finding, and it is not lost.
    # (CI met this with one PYTHONHASHSEED: the sum above was one short.)
    good = _sim_run()
    case = random_case(4, 0)
    calls = [0]

    def wrong_twice(c: Case) -> Outcome:
        out = good(c)
        calls[0] += 1
        if calls[0] > 2:
            return out
        return Outcome(side="model", inserts=out.inserts, events=out.events, runs=out.runs,
                       run_count=out.run_count + 1, endpoints=out.endpoints)

    stats = Engine(FuzzConfig(seed=4, cases=2, batch=2), FunctionPool(good), wrong_twice, Corpus(tmp_path),
                   source=lambda i: case).run()
    assert (stats.mismatches, stats.flaky, stats.triage_skipped, stats.findings) == (2, 1, 1, 0)
