"""The case format: any valid Case survives JSON unchanged, and every bad input is one CaseError naming its field."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from diffuzz.contract.case import (
    ALPHABET,
    FORMAT_VERSION,
    MAX_EVENTS,
    MAX_SEND,
    U32,
    U64,
    Case,
    CaseError,
    Invocation,
    PushData,
    Recv,
    Send,
    SendMsg,
    case_from_dict,
    case_to_dict,
    load_case,
    loads_case,
    peer_of,
)
from tests.unit.case_strategy import cases


def _round_trip(case: Case) -> Case:
    return loads_case(json.dumps(case_to_dict(case)))


@given(cases())
def test_any_case_survives_json(case: Case) -> None:
    back = _round_trip(case)
    assert back == case
    assert back.meta == case.meta  # meta is excluded from == (compare=False), so check it on its own
    assert back.to_json() == case.to_json()


@given(cases(max_events=MAX_EVENTS))
def test_long_cases_survive_json(case: Case) -> None:
    assert _round_trip(case) == case


def test_defaults_fill_a_minimal_case() -> None:
    case = loads_case('{"format": 1}')
    assert case == Case()
    assert case.endpoints() == ("c0", "p0")
    assert case.program == (Invocation(),)


def test_verdict_names_round_trip_to_their_values() -> None:
    doc = {"format": 1, "program": [{"verdict": "PASS"}, {"verdict": "DROP"}, {"verdict": "last_rc"}, {"verdict": 7}]}
    case = case_from_dict(doc)
    assert [inv.verdict for inv in case.program] == [1, 0, "last_rc", 7]
    assert [p["verdict"] for p in case_to_dict(case)["program"]] == ["PASS", "DROP", "last_rc", 7]


# --------------------------------------------------------------------------------------
# Rules both sides share


def test_alphabet_payload_is_one_stream_across_sends() -> None:
    case = Case(events=(Send("c0", 3), Recv("p0", 10), SendMsg("c0", (2, 60)), Send("c0", 4)))
    assert case.payload_for(0) == b"ABC"
    assert case.payload_for(2) == ALPHABET[3:] + ALPHABET[:3]  # 62 bytes, wrapping around the alphabet
    assert case.payload_for(3) == ALPHABET[3:7]
    with pytest.raises(CaseError, match=r"events\[1\]: not a send"):
        case.payload_for(1)


def test_alphabet_seed_shifts_the_stream() -> None:
    assert Case(events=(Send("c0", 2),), payload=case_from_dict(
        {"format": 1, "payload": {"seed": 1}}).payload).payload_for(0) == b"BC"


def test_random_payload_depends_on_seed_and_event_index_only() -> None:
    doc: dict[str, Any] = {"format": 1, "payload": {"pattern": "random", "seed": 9},
                           "events": [{"op": "send", "ep": "c0", "len": 16}, {"op": "send", "ep": "c0", "len": 16}]}
    case = case_from_dict(doc)
    assert case.payload_for(1) == random.Random("9:1").randbytes(16)
    assert case.payload_for(0) != case.payload_for(1)
    assert case_from_dict(doc).payload_for(1) == case.payload_for(1)


def test_run_i_uses_step_list_min_i_last() -> None:
    a, b = Invocation(verdict=0), Invocation(steps=(PushData(0, 1),))
    case = Case(program=(a, b))
    assert [case.invocation(i) for i in range(4)] == [a, b, b, b]


def test_endpoint_names_and_peers() -> None:
    assert Case(pairs=2).endpoints() == ("c0", "p0", "c1", "p1")
    assert peer_of("c1") == "p1" and peer_of("p0") == "c0"


# --------------------------------------------------------------------------------------
# Bad input: one CaseError, its message names the field


def _base() -> dict[str, Any]:
    return {
        "format": 1,
        "pairs": 2,
        "map": {"type": "sockhash", "size": 4},
        "inserts": [{"key": 0, "ep": "c0"}],
        "program": [{"steps": [{"op": "push_data", "start": 1, "len": 2}], "verdict": "PASS"}],
        "events": [
            {"op": "send", "ep": "c0", "len": 10, "flags": ["MSG_MORE"]},
            {"op": "recv", "ep": "p0", "len": 10},
            {"op": "fionread", "ep": "p1"},
            {"op": "sendmsg", "ep": "c1", "iov": [1, 2, 3]},
        ],
        "sockopts": [{"ep": "c0", "sndbuf": 4096}],
    }


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _error(doc: Any) -> str:
    with pytest.raises(CaseError) as info:
        case_from_dict(doc)
    return str(info.value)


def test_the_base_document_is_valid() -> None:
    assert case_from_dict(_base()).pairs == 2


BAD_FIELDS = [
    # (where, value, the exact message)
    (("events", 3, "iov", 1), "2", "events[3].iov[1]: must be an integer, not a string"),
    (("events", 3, "iov", 1), True, "events[3].iov[1]: must be an integer, not a boolean"),
    (("events", 3, "iov", 1), 1.5, "events[3].iov[1]: must be an integer, not a number"),
    (("events", 3, "iov", 1), -1, f"events[3].iov[1]: must be in 0..{MAX_SEND}, got -1"),
    (("events", 3, "iov"), [], "events[3].iov: must have 1..64 items, got 0"),
    (("events", 3, "iov"), [MAX_SEND, 1], f"events[3].iov: adds up to {MAX_SEND + 1}, more than {MAX_SEND}"),
    (("events", 0, "len"), MAX_SEND + 1, f"events[0].len: must be in 0..{MAX_SEND}, got {MAX_SEND + 1}"),
    (("events", 0, "flags"), ["MSG_MORE", "MSG_MORE"], "events[0].flags: lists a flag twice"),
    (("events", 0, "flags"), ["MSG_OOB"],
     "events[0].flags[0]: must be one of MSG_DONTWAIT, MSG_EOR, MSG_NOSIGNAL, MSG_MORE, got 'MSG_OOB'"),
    (("events", 0, "flags"), "MSG_MORE", "events[0].flags: must be a list, not a string"),
    (("events", 0, "ep"), "p2", "events[0].ep: must be one of c0, p0, c1, p1, got 'p2'"),
    (("events", 0, "op"), "write", "events[0].op: must be one of send, sendmsg, sendfile, splice, recv, fionread, "
                                   "close, shutdown, map_delete, map_insert, detach, attach, got 'write'"),
    (("events", 0, "op"), ["send"], "events[0].op: must be one of send, sendmsg, sendfile, splice, recv, fionread, "
                                    "close, shutdown, map_delete, map_insert, detach, attach, got ['send']"),
    (("events", 0, "bogus"), 1, "events[0].bogus: unknown field"),
    (("events", 0, "thread"), 16, "events[0].thread: must be in 0..15, got 16"),
    (("events", 0, "thread"), "t1", "events[0].thread: must be an integer, not a string"),
    (("events", 1, "thread"), 0, "events[1].thread: unknown field"),
    (("events", 1, "peek"), 1, "events[1].peek: must be true or false, not an integer"),
    (("events", 2), [], "events[2]: must be an object, not a list"),
    (("program", 0, "steps", 0, "start"), U64 + 1, f"program[0].steps[0].start: must be in 0..{U64}, got {U64 + 1}"),
    (("program", 0, "steps", 0, "op"), "jump",
     "program[0].steps[0].op: must be one of apply_bytes, cork_bytes, pull_data, push_data, pop_data, write, "
     "redirect, got 'jump'"),
    (("program", 0, "steps", 0), {"op": "redirect"}, "program[0].steps[0].key: missing"),
    (("program", 0, "steps", 0), {"op": "redirect", "key": U32 + 1},
     f"program[0].steps[0].key: must be in 0..{U32}, got {U32 + 1}"),
    (("program", 0, "steps", 0), {"op": "write", "offset": 0, "data": "zz"},
     "program[0].steps[0].data: must be hex digits, two per byte"),
    (("program", 0, "steps", 0), {"op": "write", "offset": 0, "data": "00" * 17},
     "program[0].steps[0].data: must hold 1..16 bytes, got 17"),
    (("program", 0, "verdict"), "ACCEPT", "program[0].verdict: must be PASS, DROP, last_rc or a u32, got 'ACCEPT'"),
    (("program", 0, "verdict"), -1, f"program[0].verdict: must be in 0..{U32}, got -1"),
    (("program",), [], "program: must have 1..32 items, got 0"),
    (("pairs",), 9, "pairs: must be in 1..8, got 9"),
    (("pairs",), 0, "pairs: must be in 1..8, got 0"),
    (("map", "size"), 0, "map.size: must be in 1..1024, got 0"),
    (("map", "type"), "array", "map.type: must be one of sockmap, sockhash, got 'array'"),
    (("map", "kind"), "x", "map.kind: unknown field"),
    (("inserts", 0, "ep"), "x0", "inserts[0].ep: must be one of c0, p0, c1, p1, got 'x0'"),
    (("sockopts", 0, "sndbuf"), 0, "sockopts[0].sndbuf: must be in 1..1073741824, got 0"),
    (("family",), "ipv5", "family: must be one of ipv4, ipv6, got 'ipv5'"),
    (("fresh_thread",), "yes", "fresh_thread: must be true or false, not a string"),
    (("payload",), {"pattern": "zeros"}, "payload.pattern: must be one of alphabet, random, got 'zeros'"),
    (("meta",), [], "meta: must be an object, not a list"),
    (("name",), 3, "name: must be a string, not an integer"),
    (("colour",), "red", "colour: unknown field"),
    (("format",), FORMAT_VERSION + 1,
     f"format: version {FORMAT_VERSION + 1} is newer than this diffuzz reads ({FORMAT_VERSION}); upgrade diffuzz"),
    (("format",), 0, "format: version 0 does not exist (the first is 1)"),
    (("format",), "1", "format: must be an integer, not a string"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_FIELDS,
                         ids=[".".join(map(str, p)) for p, _, _ in BAD_FIELDS])
def test_bad_field_is_named(path: tuple[Any, ...], value: Any, message: str) -> None:
    assert _error(_set(_base(), path, value)) == message


def test_a_named_thread_needs_fresh_thread() -> None:
    doc = _set(_base(), ("events", 0, "thread"), 3)
    doc["fresh_thread"] = False
    assert _error(doc) == ("events[0].thread: names a sender thread, but fresh_thread is false (every send then runs "
                           "on the worker's own thread)")


def test_sender_threads_round_trip_and_old_files_mean_a_thread_per_send() -> None:
    doc = _set(_base(), ("events", 0, "thread"), 2)
    case = case_from_dict(doc)
    assert case.shared_threads and case.sender_layout() == "shared"  # thread 2 and threads of their own
    assert loads_case(case.to_json()) == case
    old = case_from_dict(_base())  # no "thread" anywhere: the format before sender threads
    assert not old.shared_threads and old.sender_layout() == "own"
    one = case_from_dict(_set(_set(_base(), ("events", 0, "thread"), 1), ("events", 3, "thread"), 1))
    assert one.sender_layout() == "one"
    assert '"thread"' not in old.to_json()


def test_missing_format_is_named() -> None:
    doc = _base()
    del doc["format"]
    assert _error(doc) == "format: missing"


def test_a_case_must_be_an_object() -> None:
    assert _error([1]) == "must be an object, not a list"


def test_too_many_events() -> None:
    doc = _set(_base(), ("events",), [{"op": "detach"}] * (MAX_EVENTS + 1))
    assert _error(doc) == f"events: must have 0..{MAX_EVENTS} items, got {MAX_EVENTS + 1}"


def test_not_json_names_line_and_column() -> None:
    with pytest.raises(CaseError, match=r"^not valid JSON: Expecting ',' delimiter at line 2 column 1$"):
        loads_case('{"format": 1\n"pairs": 2}')


def test_load_case_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_set(_base(), ("events", 3, "iov", 1), "2")))
    with pytest.raises(CaseError) as info:
        load_case(str(bad))
    assert str(info.value) == f"{bad}: events[3].iov[1]: must be an integer, not a string"


def test_load_case_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match=r"nope\.json: cannot read: No such file or directory$"):
        load_case(str(tmp_path / "nope.json"))


def test_load_case_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"name": "\xe9"}')
    with pytest.raises(CaseError, match=r"latin1\.json: not UTF-8 text$"):
        load_case(str(bad))


# --------------------------------------------------------------------------------------
# docs/case-format.md: its examples are real, valid files


def _doc_json_blocks() -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "case-format.md").read_text()
    return re.findall(r"```json\n(.*?)```", text, re.S)


def test_doc_full_example_is_a_valid_case() -> None:
    case = loads_case(_doc_json_blocks()[0])
    assert case.name == "push_then_redirect_ingress"
    assert {e.op for e in case.events} == {"send", "sendmsg", "recv", "fionread", "close"}
    assert _round_trip(case) == case


def test_doc_step_and_event_examples_load() -> None:
    _, step_lines, event_lines, _ = _doc_json_blocks()
    steps = [json.loads(line) for line in step_lines.splitlines()]
    events = [json.loads(line) for line in event_lines.splitlines()]
    case = case_from_dict({"format": 1, "pairs": 2, "program": [{"steps": steps}], "events": events})
    assert len(case.program[0].steps) == len(steps) == 4
    assert len(case.events) == len(events) == 7
    assert case.events[0].thread == 0  # the sender-thread example


def test_doc_outcome_example_loads() -> None:
    from diffuzz.contract.outcome import loads_outcome

    outcome = loads_outcome(_doc_json_blocks()[3])
    assert outcome.side == "kernel" and outcome.run_count == 2
    assert outcome.events[2].data is not None and outcome.events[2].data.raw == b"****ABCDEFGHIJ"
