"""The worker pipe's binary encoding (diffuzz/contract/wire.py): what goes in comes out, equal and
of the same types; frames split anywhere reassemble; anything else is a ValueError."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import sim
from diffuzz.contract.case import Case, load_case
from diffuzz.contract.outcome import Data, Endpoint, Outcome
from diffuzz.contract.wire import HEADER, MAGIC, TYPES, frame, frames, unframe
from diffuzz.engine.generate import random_case

ROOT = Path(__file__).resolve().parents[2]


def _round(value: Case | Outcome) -> Case | Outcome:
    buf = bytearray(frame(value))
    (payload,) = frames(buf)
    assert not buf
    return unframe(payload, type(value))


def _same(a: object, b: object) -> None:
    """Equal, and built of the same types all the way down (a tuple stays a tuple, a list a list)."""
    assert type(a) is type(b)
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()  # type: ignore[attr-defined]
        for k in a:
            _same(a[k], b[k])  # type: ignore[index]
    else:
        assert a == b


def test_every_contract_dataclass_has_a_tag() -> None:
    names = {t.__name__ for t in TYPES}
    assert {"Case", "Invocation", "PushData", "Send", "SendMsg", "MapInsert", "Outcome", "Run", "Data",
            "Endpoint", "RunContext", "StepRecord", "EventResult"} <= names


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_cases_and_their_model_outcomes_round_trip(seed: int) -> None:
    for i in range(150):
        case = random_case(seed, i)
        _same(_round(case), case)
        out = sim.run(case)  # unknown byte ranges, kernel_bugs notes, every field of a run
        _same(_round(out), out)


def test_corpus_cases_with_meta_and_notes_round_trip() -> None:
    case = load_case(str(ROOT / "corpus/kernel-bugs/K1_send_returns_more_than_len.json"))
    assert case.meta
    back = _round(case)
    _same(back, case)
    assert back.meta == case.meta  # meta is not compared by ==
    out = dataclasses.replace(sim.run(case), notes={"kernel_log": ["a", "b"], "elapsed_us": 7, "x": None})
    _same(_round(out).notes, out.notes)


def test_data_with_unknown_ranges_keeps_them() -> None:
    out = Outcome(side="model", endpoints={"p0": Endpoint(rx=Data(b"abcdef", ((1, 3),)))})
    back = _round(out)
    assert back.endpoints["p0"].rx.unknown == ((1, 3),) and back == out


def test_frames_split_anywhere_reassemble() -> None:
    cases = [random_case(9, i) for i in range(5)]
    stream = b"".join(frame(c) for c in cases)
    buf = bytearray()
    got: list[bytes] = []
    for k in range(0, len(stream), 7):  # 7-byte reads: headers and payloads cut at every place
        buf += stream[k:k + 7]
        got += frames(buf)
    assert [unframe(p, Case) for p in got] == cases and not buf


def test_what_is_not_a_frame_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a diffuzz frame"):
        frames(bytearray(b'{"format": 1}\n'))
    with pytest.raises(ValueError, match="not a diffuzz frame"):
        unframe(b"garbage", Case)
    with pytest.raises(ValueError, match="Case where a Outcome was expected"):
        unframe(frame(Case())[HEADER:], Outcome)
    assert frames(bytearray(MAGIC + b"\x10\x00")) == []  # a header not yet whole: wait for more
