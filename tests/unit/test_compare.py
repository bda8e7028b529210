"""compare(): finds each kind of difference at its path, and loosens only what MASKS lists."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given

from diffuzz.contract.outcome import Data, Endpoint, EventResult, Outcome, Run, RunContext, StepRecord
from diffuzz.engine.compare import MASKS, Difference, compare
from tests.unit.case_strategy import outcomes

CTX = RunContext(family=2, local="c0", remote="p0", task=0)
RUN = Run(ep="c0", size_in=10, win_in=10, steps=(StepRecord(0, 10), StepRecord(1, 10)), size_out=10, verdict=1,
          ctx=CTX)
BASE = Outcome(
    side="kernel",
    inserts=(0, 0),
    events=(EventResult(ret=10), EventResult(ret=4, data=Data(b"ABCD"))),
    runs=(RUN,),
    run_count=1,
    endpoints={"c0": Endpoint(fionread=0), "p0": Endpoint(rx=Data(b"EFGHIJ"), fionread=6)},
)


def _paths(kernel: Outcome, model: Outcome) -> list[str]:
    return [d.path for d in compare(kernel, model)]


def _run(**changes: object) -> Outcome:
    return replace(BASE, runs=(replace(RUN, **changes),))


def test_identical_outcomes_agree() -> None:
    assert compare(BASE, replace(BASE, side="model")) == []


@given(outcomes())
def test_an_outcome_without_wildcards_agrees_with_itself(o: Outcome) -> None:
    # The kernel never reports holes; with none, every field compares equal to itself.
    plain = replace(
        o,
        events=tuple(replace(e, data=e.data and Data(e.data.raw)) for e in o.events),
        endpoints={n: replace(ep, rx=Data(ep.rx.raw)) for n, ep in o.endpoints.items()},
    )
    assert compare(plain, replace(plain, side="model", notes={"other": 1})) == []


DIFFERENCES = [
    (replace(BASE, inserts=(0, "EINVAL")), "inserts[1]", 0, "EINVAL"),
    (replace(BASE, inserts=(0,)), "inserts.length", 2, 1),
    (replace(BASE, events=(EventResult(ret="EAGAIN"), BASE.events[1])), "events[0].ret", 10, "EAGAIN"),
    (replace(BASE, events=(EventResult(ret=10, sigpipe=True), BASE.events[1])), "events[0].sigpipe", False, True),
    (replace(BASE, events=(BASE.events[0], EventResult(ret=4, data=Data(b"ABCX")))), "events[1].data",
     "41424344", "41424358"),
    (replace(BASE, events=(BASE.events[0], EventResult(ret=4))), "events[1].data", "41424344", None),
    (replace(BASE, events=BASE.events[:1]), "events.length", 2, 1),
    (replace(BASE, run_count=2), "run_count", 1, 2),
    (replace(BASE, runs=()), "runs.length", 1, 0),
    (_run(ep="p0"), "runs[0].ep", "c0", "p0"),
    (_run(size_in=9), "runs[0].size_in", 10, 9),
    (_run(win_in=4096), "runs[0].win_in", 10, 4096),
    (_run(steps=RUN.steps[:1]), "runs[0].steps.length", 2, 1),
    (_run(steps=(StepRecord(-22, 10), RUN.steps[1])), "runs[0].steps[0].rc", 0, -22),
    (_run(steps=(StepRecord(0, 3), RUN.steps[1])), "runs[0].steps[0].win", 10, 3),
    (_run(size_out=13), "runs[0].size_out", 10, 13),
    (_run(verdict=0), "runs[0].verdict", 1, 0),
    (_run(ctx=replace(CTX, task=1)), "runs[0].ctx", CTX, replace(CTX, task=1)),
    (replace(BASE, endpoints={"c0": BASE.endpoints["c0"]}), "endpoints.p0", BASE.endpoints["p0"], None),
    (replace(BASE, endpoints={**BASE.endpoints, "p0": Endpoint(rx=Data(b"EFGHIj"), fionread=6)}),
     "endpoints.p0.rx", "45464748494a", "45464748496a"),
    (replace(BASE, endpoints={**BASE.endpoints, "p0": Endpoint(rx=Data(b"EFGHIJ"), fionread=0)}),
     "endpoints.p0.fionread", 6, 0),
    (replace(BASE, endpoints={**BASE.endpoints, "p0": Endpoint(rx=Data(b"EFGHIJ"), fionread=6, end="EOF")}),
     "endpoints.p0.end", "EAGAIN", "EOF"),
    (replace(BASE, hang=True), "hang", False, True),
]


@pytest.mark.parametrize(("model", "path", "kernel_value", "model_value"), DIFFERENCES,
                         ids=[path for _, path, _, _ in DIFFERENCES])
def test_each_kind_of_difference(model: Outcome, path: str, kernel_value: object, model_value: object) -> None:
    assert compare(BASE, replace(model, side="model")) == [Difference(path, kernel_value, model_value)]


def test_a_hang_on_both_sides_hides_everything_else() -> None:
    assert compare(replace(BASE, hang=True), replace(BASE, hang=True, run_count=5, inserts=())) == []


def test_a_hang_on_one_side_is_the_only_difference() -> None:
    assert _paths(BASE, replace(BASE, hang=True, run_count=5)) == ["hang"]


def test_differences_come_in_field_order() -> None:
    model = replace(BASE, inserts=(1, 0), run_count=3, endpoints={**BASE.endpoints, "c0": Endpoint(fionread=1)})
    assert _paths(BASE, model) == ["inserts[0]", "run_count", "endpoints.c0.fionread"]


# --------------------------------------------------------------------------------------
# The masks, one by one


def test_mask_model_wildcard_matches_any_kernel_byte() -> None:
    model = replace(BASE, endpoints={**BASE.endpoints, "p0": Endpoint(rx=Data.from_json("4546????494a"), fionread=6)})
    assert compare(BASE, model) == []
    events = (BASE.events[0], EventResult(ret=4, data=Data.from_json("41??????")))
    assert compare(BASE, replace(BASE, events=events)) == []


def test_mask_wildcards_still_need_the_same_length() -> None:
    model = replace(BASE, endpoints={**BASE.endpoints, "p0": Endpoint(rx=Data.from_json("4546????49"), fionread=6)})
    assert _paths(BASE, model) == ["endpoints.p0.rx"]


def test_mask_wildcards_do_not_hide_known_bytes() -> None:
    model = replace(BASE, endpoints={**BASE.endpoints, "p0": Endpoint(rx=Data.from_json("4546????4900"), fionread=6)})
    assert _paths(BASE, model) == ["endpoints.p0.rx"]


def test_a_kernel_with_wildcards_is_reported() -> None:
    kernel = replace(BASE, endpoints={**BASE.endpoints, "p0": Endpoint(rx=Data.from_json("45??"), fionread=6)})
    assert _paths(kernel, replace(kernel, side="model")) == ["endpoints.p0.rx"]


def test_mask_window_none_in_the_model_is_not_compared() -> None:
    model = _run(win_in=None, steps=(StepRecord(0, None), StepRecord(1, None)))
    assert compare(BASE, model) == []


def test_mask_window_only_the_model_may_leave_it_open() -> None:
    kernel = _run(win_in=None)
    assert _paths(kernel, BASE) == ["runs[0].win_in"]


def test_mask_notes_and_side_are_never_compared() -> None:
    assert compare(replace(BASE, notes={"kernel": "6.18"}), replace(BASE, side="model", notes={"t": 1.5})) == []


def test_every_mask_says_what_and_why() -> None:
    assert len(MASKS) == 3
    for mask in MASKS:
        assert mask.field and mask.rule and len(mask.reason) > 20


def test_difference_kind_folds_indexes_and_endpoint_names() -> None:
    assert Difference("runs[3].steps[0].rc", 0, -22).kind() == "runs[*].steps[*].rc"
    assert Difference("endpoints.p12.rx", "", "").kind() == "endpoints.*.rx"
    assert Difference("run_count", 1, 2).kind() == "run_count"
