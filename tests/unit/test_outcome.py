"""The Outcome JSON: exact round trips, Data wildcards, and malformed files rejected with ValueError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from diffuzz.contract.outcome import Data, Endpoint, EventResult, Outcome, errno_ret, loads_outcome, outcome_from_dict
from tests.unit.case_strategy import datas, outcomes


@given(outcomes())
def test_any_outcome_survives_json(o: Outcome) -> None:
    back = loads_outcome(json.dumps(o.to_dict()))
    assert back == o
    assert back.notes == o.notes  # notes are excluded from == (compare=False)


@given(datas())
def test_canonical_data_survives_json(d: Data) -> None:
    assert Data.from_json(d.to_json()) == d


def test_wildcards_in_json() -> None:
    d = Data.from_json("41????44??")
    assert d.raw == b"A\x00\x00D\x00"
    assert d.unknown == ((1, 3), (4, 5))
    assert d.to_json() == "41????44??"
    assert list(d.known_mask()) == [1, 0, 0, 1, 0]


def test_adjacent_unknown_ranges_merge() -> None:
    assert Data.from_json(Data(b"abcd", ((0, 1), (1, 3))).to_json()).unknown == ((0, 3),)


def test_an_unknown_byte_matches_any_byte_but_the_length_must_match() -> None:
    d = Data.from_json("41??43")
    assert d.matches(b"ABC") and d.matches(b"A\xffC")
    assert not d.matches(b"XBC") and not d.matches(b"ABX")
    assert not d.matches(b"AB") and not d.matches(b"ABCD")
    assert Data(b"xyz").matches(b"xyz") and not Data(b"xyz").matches(b"xyZ")


def test_event_results_omit_defaults() -> None:
    o = Outcome(side="model", events=(EventResult(ret=3), EventResult(ret="EAGAIN", sigpipe=True, data=Data(b""))),
                endpoints={"p0": Endpoint(rx=Data(b"hi"), fionread=2)})
    d = o.to_dict()
    assert d["events"] == [{"ret": 3}, {"ret": "EAGAIN", "sigpipe": True, "data": ""}]
    assert d["endpoints"] == {"p0": {"rx": "6869", "fionread": 2, "end": "EAGAIN"}}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"format": 2}, "outcome format 2 is not 1"),
        ({"side": None, "events": None}, "TypeError"),
        ({"runs": [{"ep": "c0"}]}, "KeyError"),
        ({"endpoints": {"p0": {"rx": "4", "fionread": 0, "end": "EOF"}}}, "ValueError"),
    ],
)
def test_malformed_outcome_is_a_value_error(change: dict, fragment: str) -> None:
    doc = Outcome(side="kernel").to_dict() | change
    with pytest.raises(ValueError, match="malformed outcome") as info:
        outcome_from_dict(doc)
    assert fragment in str(info.value)


def test_errno_names() -> None:
    assert errno_ret(11) == "EAGAIN" and errno_ret(32) == "EPIPE" and errno_ret(200) == "E200"
