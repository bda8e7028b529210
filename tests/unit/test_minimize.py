"""The minimizer on synthetic predicates: it must find small cases, keep the predicate true,
never run a candidate twice, and respect its time budget."""

from __future__ import annotations

import sim
from diffuzz.contract.case import (
    SEND_TYPES,
    U32,
    ApplyBytes,
    Case,
    Invocation,
    MapEntry,
    MapInsert,
    PopData,
    PushData,
    Send,
    SendMsg,
)
from diffuzz.engine.generate import random_case
from diffuzz.engine.minimize import Minimizer, complexity, minimize
from diffuzz.engine.zone import GenConfig

BIG = GenConfig(pairs=(2, 3), sends=(20, 20), others=(4, 8), steps=(2, 4), invocations=(2, 4))


def _sends(c: Case) -> list:
    return [e for e in c.events if isinstance(e, SEND_TYPES)]


def _first_where(pred, config=BIG):
    for i in range(2000):
        c = random_case(21, i, config)
        if pred(c):
            return c
    raise AssertionError("no generated case satisfies the synthetic predicate")


def test_delta_debugging_keeps_only_what_the_bug_needs():
    # "Bug": a pop_data starting at >= 3 anywhere, and two sends of >= 100 bytes.
    def bug(c: Case) -> bool:
        pop = any(isinstance(s, PopData) and 3 <= s.start for inv in c.program for s in inv.steps)
        return pop and sum(e.size >= 100 for e in _sends(c)) >= 2

    case = _first_where(bug)
    small, stats = minimize(case, bug)
    assert bug(small)
    assert len(small.events) == 2 and all(isinstance(e, Send) and not e.flags for e in small.events)
    assert sorted(e.size for e in small.events) == [100, 100]  # numbers shrink to the boundary
    steps = [s for inv in small.program for s in inv.steps]
    assert len(small.program) == 1 and len(steps) == 1
    assert steps[0] == PopData(3, 0, 0)
    assert small.inserts == () and small.family == "ipv4" and small.map.type == "sockmap"
    assert complexity(small) < complexity(case)
    assert stats.calls > 0 and not stats.timed_out


def test_numbers_shrink_to_u32_boundaries():
    # A truncation bug: only the low 32 bits matter, and they must be >= 2^31.
    case = Case(program=(Invocation((ApplyBytes((1 << 63) + (1 << 31) + 12345),)),), events=(Send("c0", 10),),
                inserts=(MapEntry(0, "c0"),))

    def bug(c: Case) -> bool:
        return any(isinstance(s, ApplyBytes) and s.bytes & U32 >= 1 << 31 for inv in c.program for s in inv.steps)

    small, _ = minimize(case, bug)
    assert small.program[0].steps == (ApplyBytes(1 << 31),)
    assert small.events == ()


def test_sendmsg_becomes_send_when_the_kind_does_not_matter():
    case = Case(events=(SendMsg("c0", (3, 4, 5), ("MSG_MORE", "MSG_NOSIGNAL")),))

    def bug(c: Case) -> bool:
        return any(e.size >= 7 for e in _sends(c))

    small, _ = minimize(case, bug)
    assert small.events == (Send("c0", 7),)


def test_every_candidate_runs_once():
    def pushes(c: Case) -> bool:
        return any(isinstance(s, PushData) for inv in c.program for s in inv.steps)

    hits = 0
    cases = [c for c in (random_case(21, i, BIG) for i in range(2000)) if pushes(c)][:60]
    assert cases
    for case in cases:
        seen: list[Case] = []

        def bug(c: Case, seen: list[Case] = seen) -> bool:
            seen.append(c)
            return pushes(c)

        m = Minimizer(case, bug)
        m.run()
        assert len(seen) == len(set(seen)) == m.stats.calls
        hits += m.stats.cache_hits
    assert hits > 0, "no minimization asked for a candidate twice: the cache went untested"


def test_twenty_send_case_reaches_target_size():
    # The brief's target: a typical finding ends with <= 3 sends and <= 3 steps.
    def bug(c: Case) -> bool:
        sends = _sends(c)
        return len(sends) >= 2 and any(isinstance(s, PushData) for inv in c.program for s in inv.steps)

    case = _first_where(lambda c: bug(c) and len(_sends(c)) >= 15)
    small, _ = minimize(case, bug)
    assert len(_sends(small)) <= 3 and sum(len(i.steps) for i in small.program) <= 3


def test_time_budget_stops_and_keeps_the_best_so_far():
    def slow_bug(c: Case) -> bool:
        return len(_sends(c)) >= 1

    case = _first_where(lambda c: len(_sends(c)) >= 15)
    small, stats = minimize(case, slow_bug, max_seconds=0.0)
    assert stats.timed_out and small == case


def test_a_crashing_predicate_counts_as_not_the_same_bug():
    case = Case(events=(Send("c0", 10), Send("c0", 20)))

    def bug(c: Case) -> bool:
        if len(c.events) < 2:
            raise RuntimeError("model crashed")
        return True

    small, _ = minimize(case, bug)
    assert len(small.events) == 2


def test_a_stop_ends_shrinking_with_the_best_case_so_far():
    case = Case(events=tuple(Send("c0", 10 + i) for i in range(20)))
    calls: list[Case] = []

    def bug(c: Case) -> bool:
        calls.append(c)
        return bool(c.events)

    small, stats = minimize(case, bug, stop=lambda: len(calls) >= 3)
    assert len(calls) == 3 and stats.timed_out
    assert bug(small) and len(small.events) < len(case.events)


def test_a_leading_map_insert_becomes_an_initial_insert():
    # "Bug": the program runs on two sends of c0, so c0 must be in the map, however it got there.
    def bug(c: Case) -> bool:
        return sim.run(c).run_count >= 2

    case = Case(pairs=1, events=(MapInsert(0, "c0"), Send("c0", 5), Send("c0", 7), Send("c0", 9)))
    assert bug(case) and not bug(Case(pairs=1, events=case.events[1:]))
    small, _ = minimize(case, bug)
    assert small.inserts == (MapEntry(0, "c0"),)
    assert [e.op for e in small.events] == ["send", "send"] and bug(small)
