"""The kernel's promises (diffuzz/engine/invariants.py), without a kernel.

Each invariant has a test that breaks it on purpose and fails when its check is gone; the
corpus (seeds, findings, their recorded kernel outcomes) breaks none; the model breaks none on
generated cases except where it names the documented kernel bug it copies (K1, K2, K3); and
judge() puts a broken kernel promise before any comparison.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import sim
from diffuzz.contract.case import Case, Invocation, MapEntry, PushData, Recv, Send, load_case
from diffuzz.contract.outcome import Data, EventResult, Outcome, loads_outcome
from diffuzz.engine.confirm import rerun
from diffuzz.engine.corpus import Corpus
from diffuzz.engine.function_pool import FunctionPool, _concrete
from diffuzz.engine.generate import random_case
from diffuzz.engine.invariants import INVARIANTS, KNOWN_BUGS, broken, kmsg_title, unexplained
from diffuzz.engine.oracle import judge
from diffuzz.engine.triage import Mismatch, Triage

ROOT = Path(__file__).resolve().parents[2]
K1 = load_case(str(ROOT / "corpus/kernel-bugs/K1_send_returns_more_than_len.json"))
K2 = load_case(str(ROOT / "corpus/kernel-bugs/K2_empty_ingress_message_blocks_recv.json"))
PAIR = (MapEntry(0, "c0"), MapEntry(1, "p0"))


def _names(case: Case, outcome: Outcome) -> set[str]:
    return {b.invariant for b in broken(case, outcome)}


def _traced(*sizes: int, program: tuple[Invocation, ...] = (Invocation(),)) -> tuple[Case, Outcome]:
    """A PASS case with the traceable payload, and the model's outcome for it."""
    case = Case(pairs=1, inserts=PAIR, program=program, events=tuple(Send("c0", n) for n in sizes),
                payload=dataclasses.replace(Case().payload, pattern="random", seed=7))
    return case, sim.run(case)


def _with_rx(o: Outcome, ep: str, raw: bytes) -> Outcome:
    endpoints = dict(o.endpoints)
    endpoints[ep] = dataclasses.replace(endpoints[ep], rx=Data(raw))
    return dataclasses.replace(o, endpoints=endpoints)


def test_every_invariant_says_its_promise_and_source() -> None:
    assert [i.name for i in INVARIANTS] == ["return_bound", "errno_sanity", "byte_provenance", "accounting",
                                             "program_view", "kernel_log", "termination"]
    for inv in INVARIANTS:
        assert inv.promise and inv.source
    assert {n for names in KNOWN_BUGS.values() for n in names} <= {i.name for i in INVARIANTS}


def test_return_bound_catches_k1() -> None:
    o = sim.run(K1)
    assert o.events[0].ret == 2 and o.notes["kernel_bugs"] == ["K1"]
    assert "return_bound" in _names(K1, o)
    assert unexplained(K1, o) == []  # the model copies K1 and says so


def test_errno_sanity_catches_k2_and_a_fionread_that_lies() -> None:
    o = sim.run(K2)
    assert "errno_sanity" in _names(K2, o) and o.notes["kernel_bugs"] == ["K2"]
    fionread = dataclasses.replace(K2.events[4], ep="p0")
    case = Case(pairs=1, inserts=PAIR, events=(Send("c0", 5), fionread, Recv("p0", 10)))
    good = sim.run(case)
    assert _names(case, good) == set()
    lying = dataclasses.replace(good, events=(good.events[0], EventResult(ret=5), EventResult(ret="EAGAIN")))
    assert "errno_sanity" in _names(case, lying)


def test_byte_provenance_sees_bytes_from_nowhere_twice_and_out_of_order() -> None:
    case, o = _traced(300, 300, 300)
    raw = o.endpoints["p0"].rx.raw
    assert len(raw) == 900 and _names(case, o) == set()
    assert "byte_provenance" in _names(case, _with_rx(o, "p0", raw[:400] + bytes(200) + raw[600:]))
    assert "byte_provenance" in _names(case, _with_rx(o, "p0", raw + raw[100:400]))
    shuffled = raw[600:] + raw[300:600] + raw[:300]  # three chunks backwards: three increasing runs
    assert "byte_provenance" in _names(case, _with_rx(o, "p0", shuffled))
    two_queues = raw[300:] + raw[:300]  # ingress_msg first, then TCP: two runs are allowed (spec §7.1)
    assert "byte_provenance" not in _names(case, _with_rx(o, "p0", two_queues))


def test_pushed_bytes_are_allowed_as_far_as_the_program_pushed() -> None:
    case, o = _traced(100, program=(Invocation((PushData(10, 40),)), Invocation()))
    raw = o.endpoints["p0"].rx.raw
    assert len(raw) == 140
    garbage = raw[:10] + bytes(range(40)) + raw[50:]  # never-written memory: any bytes
    assert _names(case, _with_rx(_concrete(o), "p0", garbage)) == set()


def test_accounting_sees_bytes_delivered_beyond_what_send_returned() -> None:
    case, o = _traced(300)
    short = dataclasses.replace(o, events=(EventResult(ret=200),))
    assert "accounting" in _names(case, short)
    assert "accounting" not in _names(case, o)


def test_program_view_sees_a_window_of_bytes_from_nowhere() -> None:
    case, o = _traced(300)
    head = o.runs[0].head
    assert head is not None and len(head) == 16 and _names(case, o) == set()
    odd = dataclasses.replace(o, runs=(dataclasses.replace(o.runs[0], head=Data(bytes(16))),))
    assert "program_view" in _names(case, odd)
    seen = dataclasses.replace(o, runs=(dataclasses.replace(o.runs[0], head=None),))  # a runner that records none
    assert "program_view" not in _names(case, seen)


def test_kernel_log_lines_that_count() -> None:
    case, o = _traced(10)
    warn = "WARNING: CPU: 1 PID: 4242 at net/core/skmsg.c:100 sk_msg_free+0x1/0x2"
    assert kmsg_title(warn) == "WARNING" and kmsg_title("BUG: KASAN: slab-use-after-free in x") == "KASAN"
    assert kmsg_title("IPv6: ADDRCONF(NETDEV_CHANGE): lo: link becomes ready") is None
    logged = dataclasses.replace(o, notes={"kernel_log": ["random: crng init done", warn]})
    assert [b.invariant for b in broken(case, logged)] == ["kernel_log"]


def test_termination() -> None:
    case, o = _traced(10)
    assert "termination" in _names(case, dataclasses.replace(o, hang=True))


def test_the_corpus_breaks_no_promise() -> None:
    for path in sorted((ROOT / "corpus/seeds").glob("*.json")):
        case = load_case(str(path))
        assert unexplained(case, sim.run(case)) == [], path.name
    for bucket in Corpus(ROOT / "corpus").buckets():
        case = load_case(str(bucket / "case.json"))
        assert unexplained(case, sim.run(case)) == [], bucket.name
        recorded = loads_outcome((bucket / "kernel.json").read_text())
        assert broken(case, recorded) == [], bucket.name


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_model_breaks_no_promise_it_does_not_name(seed: int) -> None:
    # A model outcome that breaks a promise must name the kernel bug it copies; anything else is a
    # model bug.  2000 generated cases per seed, the traceable payload in most of them.
    bad = []
    for i in range(2000):
        case = random_case(seed, i)
        found = unexplained(case, sim.run(case))
        if found:
            bad.append(f"case {i}: {found[0].invariant}: {found[0].detail}")
    assert not bad, "\n".join(bad[:5])


def test_judge_a_broken_kernel_promise_is_a_finding_even_when_the_sides_agree() -> None:
    model = sim.run(K1)
    v = judge(K1, _concrete(model), model)
    assert v.kinds == {"invariant.return_bound"} and v.known == ("K1",)
    case, o = _traced(300)
    v = judge(case, dataclasses.replace(_concrete(o), events=(EventResult(ret=200),)), o)
    # 300 bytes delivered for a send that says 200: more than accepted (provenance's total) and
    # more than that sender's sends accepted (accounting); the model did not copy this one.
    assert v.kinds == {"invariant.byte_provenance", "invariant.accounting"} and v.known == ()
    assert [d.path for d in v.differences][:2] == ["invariant.byte_provenance", "invariant.accounting"]
    assert judge(case, _concrete(o), o).kinds == frozenset()


def test_judge_a_breach_a_documented_bug_explains_rides_with_the_difference() -> None:
    # The kernel breaks K1's promise (return_bound); a model that took another path on the way there
    # (here: it accepted the one byte and names no bug) cannot name K1.  K1 needs a size change
    # (push_data: reachable here), so the difference is the finding and the breach goes with it.
    kernel = _concrete(sim.run(K1))
    other_path = dataclasses.replace(sim.run(K1), events=(EventResult(ret=1), *sim.run(K1).events[1:]), notes={})
    v = judge(K1, kernel, other_path)
    assert v.kinds == {"events[*].ret"} and [b.invariant for b in v.shadowed] == ["return_bound"]
    assert not any(d.path.startswith("invariant.") for d in v.differences)
    # Without a push or pop no documented bug reaches return_bound: the breach is the finding.
    plain = dataclasses.replace(K1, program=(Invocation(steps=(K1.program[0].steps[0],), verdict=0),))
    v = judge(plain, kernel, other_path)
    assert v.kinds == {"invariant.return_bound"} and v.shadowed == ()


def test_judge_checks_the_model_alone_only_where_it_may_see_more() -> None:
    # seen_alike: with nothing different and the kernel breaking nothing, the model's own check is
    # skipped -- except where the comparison cannot see all the checks read.  A model whose window
    # shows bytes from nowhere (a model bug) against a kernel that recorded no window: compare()
    # leaves heads out when either is None, the kernel breaks nothing, and the model's breach must
    # still be found.
    case, o = _traced(300)
    odd = dataclasses.replace(o, runs=(dataclasses.replace(o.runs[0], head=Data(bytes(16))),))
    headless = dataclasses.replace(_concrete(o), runs=(dataclasses.replace(o.runs[0], head=None),))
    v = judge(case, headless, odd)
    assert v.kinds == frozenset() and [b.invariant for b in v.model_broken] == ["program_view"]
    # The same breach on both sides is the kernel's (and the model's, unnamed).
    v = judge(case, _concrete(odd), odd)
    assert v.kinds == {"invariant.program_view"} and [b.invariant for b in v.model_broken] == ["program_view"]
    # And agreeing sides that break nothing: nothing, as the full check says.
    v = judge(case, _concrete(o), o)
    assert not v.kinds and not v.model_broken and unexplained(case, o) == []


@pytest.mark.parametrize("seed", [11, 12])
def test_judge_skipping_the_models_check_loses_nothing(seed: int) -> None:
    # Every generated case, kernel = the model made concrete: wherever the shortcut applies, the
    # model's full check finds nothing either.
    for i in range(300):
        case = random_case(seed, i)
        m = sim.run(case)
        k = _concrete(m)
        v = judge(case, k, m)
        if not v.kinds and not v.kernel_broken:
            assert v.model_broken == tuple(unexplained(case, m)), (seed, i)


def other_path(case: Case) -> Outcome:
    """A model that never lets a send return more than it was given (so it no longer copies K1)."""
    out = sim.run(case)
    events = tuple(dataclasses.replace(r, ret=min(r.ret, e.size)) if isinstance(e, Send) and isinstance(r.ret, int)
                   else r for e, r in zip(case.events, out.events, strict=True))
    return dataclasses.replace(out, events=events, notes={})


def test_triage_keeps_the_breach_that_rides_with_the_difference_in_the_notes() -> None:
    # The judge test above, through triage: the finding is the difference, and finding.md says
    # which promise the kernel broke too.
    kernel = FunctionPool(lambda c: _concrete(sim.run(c)))
    v = judge(K1, kernel.run(K1), other_path(K1))
    job = Mismatch(0, 0, K1, v.kinds, v.differences)
    done = Triage(kernel, other_path).run(job, budget=2.0)
    assert done.reproduced and done.kinds == {"events[*].ret"}
    (note,) = [text for key, text in done.notes.items() if key.startswith("promises the kernel broke too")]
    assert note.startswith("return_bound: events[0]")


def test_a_breach_beside_a_difference_confirms_without_the_same_incidental_differences() -> None:
    # The kernel's first run breaks a promise a documented bug could explain (K1's) beside a
    # difference, and differs in one more field; the re-run breaks the same promise beside the
    # difference, without that field.  The breach is what reproduces: confirmed, as it was when
    # the breach named the finding.
    again = _concrete(sim.run(K1))
    first = dataclasses.replace(again, run_count=again.run_count + 1)
    v = judge(K1, first, other_path(K1))
    assert [b.invariant for b in v.shadowed] == ["return_bound"] and v.kinds == {"events[*].ret", "run_count"}
    job = Mismatch(0, 0, K1, v.kinds, v.differences, broken=frozenset(b.invariant for b in v.shadowed))
    r = rerun(K1, job.kinds, FunctionPool(lambda c: again), other_path, broken=job.broken)
    assert r.reproduced and r.kinds == {"events[*].ret"}
    # Without the breach the same re-run would be flaky: the kinds differ.
    assert not rerun(K1, job.kinds, FunctionPool(lambda c: again), other_path).reproduced
    # And a re-run that breaks nothing is not the finding, whatever it differs in.
    kept = dataclasses.replace(first, events=other_path(K1).events)
    assert not rerun(K1, job.kinds, FunctionPool(lambda c: kept), other_path, broken=job.broken).reproduced
