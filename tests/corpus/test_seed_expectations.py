"""The seed corpus (spec §12 worked examples) and the checker of its expectations.

For every corpus/seeds/*.json:
- it loads, dumps and reloads to the same case (meta included);
- the model (sim.run) meets every expectation the spec states for it;
- the real kernel (kernel_runner.local.run) meets them too (@pytest.mark.kernel).
Then diffuzz/engine/expect.py itself is tested on hand-made Outcomes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from diffuzz.contract.case import Case, CaseError, Recv, case_to_dict, load_case, loads_case
from diffuzz.engine.expect import model_out_of_scope, ExpectedError, check_expected, pattern_of, validate_expected
from diffuzz.engine.probes import ProfileChoice
from sim.profile import PROFILES, Profile
from diffuzz.contract.outcome import MAX_RUN_RECORDS, Data, Endpoint, EventResult, Outcome, Run, RunContext, StepRecord

SEEDS_DIR = Path(__file__).resolve().parents[2] / "corpus" / "seeds"
SEED_PATHS = sorted(SEEDS_DIR.glob("*.json"))
NAME = re.compile(r"^W(\d\d)([a-z]?)_[a-z0-9_]+$")
# Seeds beyond the worked examples (corpus/seeds/README.md): T for sender threads, R for the ring.
BEYOND = re.compile(r"^[TR](\d\d)([a-z]?)_[a-z0-9_]+$")
# Every worked example of spec §12.  The spec has no W13.
EXAMPLES = {f"{n:02d}" for n in range(1, 27)} - {"13"}


def _seed_id(path: Path) -> str:
    return path.stem


@pytest.fixture(scope="module", params=SEED_PATHS, ids=_seed_id)
def seed(request: pytest.FixtureRequest) -> Case:
    return load_case(str(request.param))


# --------------------------------------------------------------------------------------
# The corpus itself


def test_every_worked_example_has_a_seed() -> None:
    found = {m.group(1) for p in SEED_PATHS if (m := NAME.match(p.stem))}
    assert found == EXAMPLES, f"missing {sorted(EXAMPLES - found)}, unexpected {sorted(found - EXAMPLES)}"


@pytest.mark.parametrize("path", SEED_PATHS, ids=_seed_id)
def test_seed_is_well_formed(path: Path) -> None:
    case = load_case(str(path))
    assert NAME.match(path.stem) or BEYOND.match(path.stem), \
        f"{path.name}: name must be W<nn>[letter]_<slug>.json, or T<nn> / R<nn> for a seed beyond §12"
    assert case.name == path.stem
    assert {"spec", "title", "description", "expected"} <= set(case.meta) <= {
        "spec", "title", "description", "expected", "expected_by_profile", "model_scope"}
    assert case.meta["spec"].startswith("§12 W" if NAME.match(path.stem) else "§")
    assert case.meta["expected"], "a seed states at least one expectation"
    validate_expected(case)
    # The set-up every §12 example shares.
    assert case.pairs == 2 and case.fresh_thread and case.payload.pattern == "alphabet"
    assert [(e.key, e.ep) for e in case.inserts] == [(0, "c0"), (1, "p0"), (2, "c1"), (3, "p1")]


@pytest.mark.parametrize("path", SEED_PATHS, ids=_seed_id)
def test_seed_round_trips(path: Path) -> None:
    case = load_case(str(path))
    again = loads_case(case.to_json())
    assert again == case
    # Case equality ignores meta (compare=False), so compare the full JSON form too.
    assert case_to_dict(again) == case_to_dict(case)
    assert case_to_dict(case) == json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------
# Both sides against the spec


def _model_run(case: Case, profile: Profile) -> Outcome:
    # No importorskip: a missing model is a failure of this test, not a reason to skip it.
    run: Any = importlib.import_module("sim").__dict__.get("run") or importlib.import_module("sim.run")
    if isinstance(run, ModuleType):
        run = run.run
    return run(case, profile)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=lambda p: p.name)
def test_model_meets_spec(seed: Case, profile: Profile, request: pytest.FixtureRequest) -> None:
    # Under every profile: the seed's `expected`, with that profile's `expected_by_profile` keys.
    out_of_scope = model_out_of_scope(seed)
    if out_of_scope:
        # Strict: if the model starts meeting the spec here, the scope note must go.
        request.applymarker(pytest.mark.xfail(reason=out_of_scope, strict=True))
    outcome = _model_run(seed, profile)
    assert outcome.side == "model"
    mismatches = check_expected(seed, outcome, profile.name)
    assert not mismatches, f"{seed.name} ({seed.meta['spec']}, profile {profile.name}):\n" + "\n".join(mismatches)


def test_expected_by_profile_names_known_profiles() -> None:
    for path in SEED_PATHS:
        names = set(load_case(str(path)).meta.get("expected_by_profile", {}))
        assert names <= set(PROFILES), f"{path.name}: unknown profiles {sorted(names - set(PROFILES))}"


@pytest.mark.kernel
def test_kernel_meets_spec(seed: Case, kernel_profile: ProfileChoice) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for BPF and network namespaces")
    local = importlib.import_module("kernel_runner.local")
    backend = importlib.import_module("kernel_runner.backend")
    try:
        outcome = local.run(seed)
    except backend.KernelUnsupported as e:
        pytest.skip(f"kernel cannot run this: {e}")
    assert outcome.side == "kernel"
    mismatches = check_expected(seed, outcome, kernel_profile.profile.name)
    assert not mismatches, (f"{seed.name} ({seed.meta['spec']}, profile {kernel_profile.profile.name}):\n"
                            + "\n".join(mismatches))


# --------------------------------------------------------------------------------------
# expect.py on hand-made Outcomes

CTX = RunContext(family=2, local="c0", remote="p0", task=0)


def _run(size: int, win: int | None = None, steps: tuple[StepRecord, ...] = (), verdict: int = 1,
         task: int = 0) -> Run:
    return Run(ep="c0", size_in=size, win_in=win, steps=steps, size_out=size, verdict=verdict,
               ctx=dataclasses.replace(CTX, task=task))


def _outcome(**kw: Any) -> Outcome:
    endpoints = {ep: Endpoint() for ep in ("c0", "p0", "c1", "p1")}
    endpoints.update(kw.pop("endpoints", {}))
    return Outcome(side="kernel", endpoints=endpoints, **kw)


def _w01() -> Case:
    return load_case(str(SEEDS_DIR / "W01_plain_pass.json"))


def _w01_outcome(**kw: Any) -> Outcome:
    fields: dict[str, Any] = {
        "inserts": (0, 0, 0, 0), "events": (EventResult(ret=10),), "runs": (_run(10, 10),), "run_count": 1,
        "endpoints": {"p0": Endpoint(rx=Data(b"ABCDEFGHIJ"), fionread=0)},
    }
    fields.update(kw)
    return _outcome(**fields)


def test_matching_outcome_has_no_mismatch() -> None:
    assert check_expected(_w01(), _w01_outcome()) == []


def test_wrong_send_return_is_reported() -> None:
    out = check_expected(_w01(), _w01_outcome(events=(EventResult(ret="EACCES"),)))
    assert out == ["kernel: events[0].ret (send c0): expected 10, got 'EACCES'"]


def test_missing_event_is_reported() -> None:
    assert check_expected(_w01(), _w01_outcome(events=())) == [
        "kernel: events[0]: missing (the outcome has 0 events)"
    ]


def test_wrong_bytes_are_reported_with_the_offset() -> None:
    out = check_expected(_w01(), _w01_outcome(endpoints={"p0": Endpoint(rx=Data(b"ABCDEXGHIJ"))}))
    assert len(out) == 1 and out[0].startswith("kernel: endpoints.p0.rx: differs at byte 5 (expected 'F', got 'X')")


def test_wrong_length_is_reported() -> None:
    out = check_expected(_w01(), _w01_outcome(endpoints={"p0": Endpoint(rx=Data(b"ABCDE"))}))
    assert out == ['kernel: endpoints.p0.rx: expected 10 bytes "ABCDEFGHIJ", got 5 bytes "ABCDE"']


def test_run_count_and_fields_are_reported() -> None:
    two = (_run(10, 10), _run(5, 5))
    out = check_expected(_w01(), _w01_outcome(runs=two, run_count=2))
    assert "kernel: run_count: expected 1, got 2" in out
    assert any(line.startswith("kernel: runs: expected 1 recorded runs, got 2") for line in out)
    out = check_expected(_w01(), _w01_outcome(runs=(_run(10, 4),)))
    assert out == ["kernel: runs[0].win_in: expected 10, got 4"]


def test_a_window_the_spec_states_must_be_known() -> None:
    # The model reports win None where it cannot pin the layout; the spec stated 10 here.
    out = check_expected(_w01(), _w01_outcome(runs=(_run(10, None),)))
    assert out == ["kernel: runs[0].win_in: expected 10, got None"]


def test_wildcards_match_any_byte_but_stated_bytes_must_be_known() -> None:
    case = load_case(str(SEEDS_DIR / "W14a_push_front.json"))  # p0: "????ABCDEFGHIJ", push rc 0, win 4
    runs = (_run(10, 10, (StepRecord(rc=0, win=4),)),)
    kernel = _outcome(runs=runs, run_count=1, endpoints={"p0": Endpoint(rx=Data(b"\x00\x07\x00\x00ABCDEFGHIJ"))})
    assert check_expected(case, kernel) == []
    holes = Data.from_json("????????" + b"ABCDEFGHIJ".hex())
    model = _outcome(runs=runs, run_count=1, endpoints={"p0": Endpoint(rx=holes)})
    assert check_expected(case, model) == []
    # A model that marks a stated byte unknown does not meet the spec.
    vague = _outcome(runs=runs, run_count=1, endpoints={"p0": Endpoint(rx=Data.from_json("??" * 14))})
    out = check_expected(case, vague)
    assert len(out) == 1 and "differs at byte 4 (expected 'A', got unknown)" in out[0]
    wrong_rc = _outcome(runs=(_run(10, 10, (StepRecord(rc=-22, win=10),)),), run_count=1,
                        endpoints={"p0": Endpoint(rx=Data(b"????ABCDEFGHIJ"))})
    assert check_expected(case, wrong_rc) == [
        "kernel: runs[0].steps[0].rc: expected 0, got -22",
        "kernel: runs[0].steps[0].win: expected 4, got 10",
    ]


def test_recv_sigpipe_end_and_fionread_are_checked() -> None:
    case = dataclasses.replace(_w01(), events=(*_w01().events, Recv("p0", 100)), meta={"expected": {
        "sigpipe": {"0": True}, "recv": {"1": "AB?"}, "end": {"p0": "EOF"}, "fionread": {"p0": 5}}})
    good = _outcome(events=(EventResult(ret="EPIPE", sigpipe=True), EventResult(ret=3, data=Data(b"ABC"))),
                    endpoints={"p0": Endpoint(fionread=5, end="EOF")})
    assert check_expected(case, good) == []
    bad = _outcome(events=(EventResult(ret=3), EventResult(ret=2, data=Data(b"AB"))),
                   endpoints={"p0": Endpoint(fionread=0, end="EAGAIN")})
    assert check_expected(case, bad) == [
        "kernel: events[0].sigpipe (send c0): expected True, got False",
        'kernel: events[1].data (recv p0): expected 3 bytes "AB?", got 2 bytes "AB"',
        "kernel: endpoints.p0.fionread: expected 5, got 0",
        "kernel: endpoints.p0.end: expected 'EOF', got 'EAGAIN'",
    ]


def test_payload_parts_name_send_bytes() -> None:
    case = load_case(str(SEEDS_DIR / "W21_sticky_pass_push_error.json"))
    pattern = pattern_of(case, case.meta["expected"]["rx"]["p0"], "rx.p0")
    assert pattern.raw == case.payload_for(0)[:32741] + case.payload_for(1)[:32741]
    assert pattern.raw[:3] == b"ABC" and set(pattern.known) == {1}


def test_hang_is_reported_alone() -> None:
    assert check_expected(_w01(), Outcome(side="kernel", hang=True)) == [
        "kernel: hang (the case did not finish), nothing else checked"
    ]


def test_a_case_without_expectations_has_nothing_to_check() -> None:
    assert check_expected(dataclasses.replace(_w01(), meta={}), Outcome(side="model")) == []


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ({"evnts": {}}, "meta.expected.evnts: unknown key"),
        ({"events": {"7": 1}}, "meta.expected.events.7: must be an event index 0..0"),
        ({"events": {"0": 1.5}}, "meta.expected.events.0: must be an integer or an errno name"),
        ({"rx": {"p9": ""}}, "meta.expected.rx.p9: must be one of c0, p0, c1, p1"),
        ({"rx": {"p0": [{"event": 0, "end": 11}]}}, "meta.expected.rx.p0[0]: start..end must lie in 0..10"),
        ({"runs": [{"size": 1}]}, "meta.expected.runs[0].size: unknown key"),
        ({"runs": [{"steps": [{"rc": "0"}]}]}, "meta.expected.runs[0].steps[0].rc: must be an integer"),
        ({"recv": {"0": "A"}}, "meta.expected.recv.0: event 0 is not a recv"),
        ({"end": {"p0": "closd"}}, "meta.expected.end.p0: must be one of EAGAIN, EOF, closed or an errno name"),
    ],
)
def test_malformed_expected_names_the_field(expected: dict[str, Any], message: str) -> None:
    case = dataclasses.replace(_w01(), meta={"expected": expected})
    with pytest.raises(ExpectedError) as info:
        check_expected(case, _w01_outcome())
    assert str(info.value).startswith(message)


def test_a_broken_seed_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "W99_broken.json"
    bad.write_text('{"format": 1, "pairs": 2, "evnts": []}', encoding="utf-8")
    with pytest.raises(CaseError, match=r"W99_broken.json: evnts: unknown field"):
        load_case(str(bad))


def test_run_task_and_step_count_are_checked() -> None:
    case = load_case(str(SEEDS_DIR / "W02b_apply15_three_sends.json"))  # runs (10,10) on send 0, (5,5) on send 1
    events = tuple(EventResult(ret=10) for _ in range(3))
    rx = {"p0": Endpoint(rx=Data(case.payload_for(0) + case.payload_for(1) + case.payload_for(2)))}
    good = _outcome(events=events, runs=(_run(10, 10, task=0), _run(5, 5, task=1)), run_count=2, endpoints=rx)
    assert check_expected(case, good) == []
    late = _outcome(events=events, runs=(_run(10, 10, task=0), _run(5, 5, task=2)), run_count=2, endpoints=rx)
    assert check_expected(case, late) == ["kernel: runs[1].ctx.task: expected event 1, got 2"]
    w09 = load_case(str(SEEDS_DIR / "W09_stale_cork_bytes.json"))  # run 2 "calls no helper": steps []
    helper = StepRecord(rc=0, win=None)
    runs = (_run(4), _run(12, task=1), _run(3, steps=(helper,), task=3), _run(11, task=5))
    out = check_expected(w09, _outcome(runs=runs, run_count=4))
    assert "kernel: runs[2].steps: expected 0 steps, got 1" in out


def test_only_the_recorded_runs_are_checked_item_by_item() -> None:
    many = [{"size_in": 1}] * (MAX_RUN_RECORDS + 6)
    case = dataclasses.replace(_w01(), meta={"expected": {"runs": many}})
    runs = tuple(_run(1) for _ in range(MAX_RUN_RECORDS))
    assert check_expected(case, _outcome(runs=runs, run_count=MAX_RUN_RECORDS + 6)) == []
    assert check_expected(case, _outcome(runs=runs, run_count=MAX_RUN_RECORDS)) == [
        f"kernel: run_count: expected {MAX_RUN_RECORDS + 6}, got {MAX_RUN_RECORDS}"
    ]
