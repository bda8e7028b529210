"""Check an Outcome against what a seed case's `meta.expected` says must happen.

The seeds in corpus/seeds/ are the spec's worked examples (§12).  Each states, in
`meta.expected`, only the observables the spec gives for it; the schema is documented in
corpus/seeds/README.md.  `check_expected` compares one side's Outcome (kernel or model)
with those statements, so a seed tells us which side disagrees with the spec, not only
that the two sides disagree with each other.

Unlike compare.py there is no mask table here: a field the spec does not pin is simply not
stated.  A byte the spec writes as "?" (an uninitialised pushed byte, §6.5) matches any
byte; a byte it does state must be known on the checked side and equal.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from diffuzz.contract.case import SEND_TYPES, Case, Recv
from diffuzz.contract.outcome import MAX_RUN_RECORDS, Data, Outcome, Run

WILDCARD = ord("?")
EXPECTED_KEYS = ("inserts", "events", "sigpipe", "recv", "run_count", "runs", "rx", "fionread", "end")
RUN_KEYS = ("ep", "task", "size_in", "win_in", "steps", "size_out", "verdict")
STEP_KEYS = ("rc", "win")
PART_KEYS = ("event", "start", "end")
ENDS = ("EAGAIN", "EOF", "closed")
EXCERPT = 24  # bytes shown either side of the first difference in a long byte string


class ExpectedError(ValueError):
    """`meta.expected` does not follow the schema; the message names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"meta.expected.{path}: {problem}" if path else f"meta.expected: {problem}")


@dataclass(frozen=True)
class Pattern:
    """Expected bytes: `raw` where `known` is 1, any byte where it is 0."""

    raw: bytes
    known: bytes

    def __len__(self) -> int:
        return len(self.raw)

    def text(self) -> str:
        return _show(self.raw, self.known)


def model_out_of_scope(case: Case) -> str | None:
    """Why the model does not predict this case, or None when it does.

    A case says so in meta.model_scope ("kernel-only: <reason>").  It is meant for what spec
    §10 keeps out of byte-exact checks (TCP back-pressure from SO_SNDBUF/SO_RCVBUF, whose
    partial counts the model does not compute); tests then check such a case against the
    spec on the kernel only, and expect the model to differ.
    """
    scope = case.meta.get("model_scope")
    if isinstance(scope, str) and scope.startswith("kernel-only"):
        return scope
    return None


def expected_for(case: Case, profile: str | None) -> Mapping[str, Any] | None:
    """`meta.expected` as it holds on a kernel of this profile: the keys of
    `meta.expected_by_profile[profile]` replace the same keys of `meta.expected` (a behaviour
    that differs between kernels changes some observables, not the whole case)."""
    expected = case.meta.get("expected")
    if expected is None or profile is None:
        return expected
    override = case.meta.get("expected_by_profile", {}).get(profile)
    return expected if override is None else {**expected, **override}


def check_expected(case: Case, outcome: Outcome, profile: str | None = None) -> list[str]:
    """Every way `outcome` differs from what the case expects on a kernel of `profile` (None:
    the plain `meta.expected`, written for the reference profile), one readable line each.

    [] when every stated expectation holds, or when the case states none.  A malformed
    `expected` raises ExpectedError (a broken seed, not a disagreement).
    """
    validate_expected(case)
    expected = expected_for(case, profile)
    if expected is None:
        return []
    if outcome.hang:
        return [f"{outcome.side}: hang (the case did not finish), nothing else checked"]
    return list(_mismatches(case, expected, outcome))


def validate_expected(case: Case) -> None:
    """Raise ExpectedError if `case.meta["expected"]` (or an `expected_by_profile` entry) does not
    follow the schema."""
    expected = case.meta.get("expected")
    if expected is None:
        return
    by_profile = case.meta.get("expected_by_profile", {})
    if not isinstance(by_profile, Mapping):
        raise ExpectedError("", "expected_by_profile must be an object: profile name -> expectations")
    _validate(case, expected)
    for name, override in by_profile.items():
        try:
            _validate(case, override)
        except ExpectedError as e:
            raise ExpectedError("", f"expected_by_profile.{name}: {e}") from None


def _validate(case: Case, expected: Any) -> None:
    if not isinstance(expected, Mapping):
        raise ExpectedError("", "must be an object")
    for key in expected:
        if key not in EXPECTED_KEYS:
            raise ExpectedError(key, f"unknown key (known: {', '.join(EXPECTED_KEYS)})")
    if "inserts" in expected:
        _list_of(expected["inserts"], "inserts", _check_ret)
    for key, each in (("events", _check_ret), ("sigpipe", _check_bool), ("recv", None)):
        for index, value in _by_event(case, expected.get(key, {}), key):
            if each is None:
                if not isinstance(case.events[index], Recv):
                    raise ExpectedError(f"{key}.{index}", f"event {index} is not a recv")
                pattern_of(case, value, f"{key}.{index}")
            else:
                each(value, f"{key}.{index}")
    if "run_count" in expected:
        _check_int(expected["run_count"], "run_count")
    if "runs" in expected:
        _list_of(expected["runs"], "runs", _check_run)
    for key in ("rx", "fionread", "end"):
        for ep, value in _by_endpoint(case, expected.get(key, {}), key):
            path = f"{key}.{ep}"
            if key == "rx":
                pattern_of(case, value, path)
            elif key == "fionread":
                _check_int(value, path)
            elif value not in ENDS and not (isinstance(value, str) and value.startswith("E")):
                raise ExpectedError(path, f"must be one of {', '.join(ENDS)} or an errno name, got {value!r}")


def pattern_of(case: Case, value: Any, path: str) -> Pattern:
    """The expected bytes of an rx / recv statement.

    A string is ASCII text, one byte a character, "?" for any byte.  A list concatenates
    parts: strings as above, or {"event": i, "start": s, "end": e}, the bytes
    payload_for(i)[s:e] of send event i (start defaults to 0, end to the send's size).
    """
    parts = value if isinstance(value, list) else [value]
    raw, known = bytearray(), bytearray()
    for n, part in enumerate(parts):
        where = f"{path}[{n}]" if isinstance(value, list) else path
        if isinstance(part, str):
            if not part.isascii():
                raise ExpectedError(where, "must be ASCII text (one byte a character, '?' for any byte)")
            data = part.encode()
            raw += data
            known += bytes(0 if b == WILDCARD else 1 for b in data)
        elif isinstance(part, Mapping):
            for key in part:
                if key not in PART_KEYS:
                    raise ExpectedError(f"{where}.{key}", "unknown key (known: event, start, end)")
            index = part.get("event")
            if not isinstance(index, int) or not 0 <= index < len(case.events):
                raise ExpectedError(f"{where}.event", f"must be an event index 0..{len(case.events) - 1}")
            if not isinstance(case.events[index], SEND_TYPES):
                raise ExpectedError(f"{where}.event", f"event {index} is not a send")
            payload = case.payload_for(index)
            start, end = part.get("start", 0), part.get("end", len(payload))
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(payload)):
                raise ExpectedError(where, f"start..end must lie in 0..{len(payload)}")
            raw += payload[start:end]
            known += b"\x01" * (end - start)
        else:
            raise ExpectedError(where, "must be a string or an {event, start, end} object")
    return Pattern(bytes(raw), bytes(known))


# --------------------------------------------------------------------------------------
# Comparison


def _mismatches(case: Case, exp: Mapping[str, Any], o: Outcome) -> Iterator[str]:
    side = o.side
    if "inserts" in exp:
        if list(o.inserts) != list(exp["inserts"]):
            yield f"{side}: inserts: expected {exp['inserts']}, got {list(o.inserts)}"
    for index, ret in _by_event(case, exp.get("events", {}), "events"):
        result = _event(o, index)
        if result is None:
            yield f"{side}: events[{index}]: missing (the outcome has {len(o.events)} events)"
        elif result.ret != ret:
            yield f"{side}: events[{index}].ret ({_describe(case, index)}): expected {ret!r}, got {result.ret!r}"
    for index, flag in _by_event(case, exp.get("sigpipe", {}), "sigpipe"):
        result = _event(o, index)
        if result is None:
            yield f"{side}: events[{index}]: missing (the outcome has {len(o.events)} events)"
        elif result.sigpipe != flag:
            yield f"{side}: events[{index}].sigpipe ({_describe(case, index)}): expected {flag}, got {result.sigpipe}"
    for index, value in _by_event(case, exp.get("recv", {}), "recv"):
        result = _event(o, index)
        if result is None:
            yield f"{side}: events[{index}]: missing (the outcome has {len(o.events)} events)"
            continue
        problem = _data_problem(pattern_of(case, value, f"recv.{index}"), result.data or Data())
        if problem:
            yield f"{side}: events[{index}].data ({_describe(case, index)}): {problem}"
    runs = exp.get("runs")
    run_count = exp.get("run_count", None if runs is None else len(runs))
    if run_count is not None and o.run_count != run_count:
        yield f"{side}: run_count: expected {run_count}, got {o.run_count}"
    if runs is not None:
        yield from _runs(side, runs, o.runs)
    for ep, value in _by_endpoint(case, exp.get("rx", {}), "rx"):
        end = o.endpoints.get(ep)
        if end is None:
            yield f"{side}: endpoints.{ep}: missing"
            continue
        problem = _data_problem(pattern_of(case, value, f"rx.{ep}"), end.rx)
        if problem:
            yield f"{side}: endpoints.{ep}.rx: {problem}"
    for key in ("fionread", "end"):
        for ep, value in _by_endpoint(case, exp.get(key, {}), key):
            end = o.endpoints.get(ep)
            if end is None:
                yield f"{side}: endpoints.{ep}: missing"
            elif getattr(end, key) != value:
                yield f"{side}: endpoints.{ep}.{key}: expected {value!r}, got {getattr(end, key)!r}"


def _runs(side: str, expected: list[Mapping[str, Any]], runs: tuple[Run, ...]) -> Iterator[str]:
    # "runs" lists every run, so only the first MAX_RUN_RECORDS can be checked field by field.
    recorded = min(len(expected), MAX_RUN_RECORDS)
    if len(runs) != recorded:
        yield f"{side}: runs: expected {recorded} recorded runs, got {len(runs)}: {_run_sizes(runs)}"
    for i, (want, run) in enumerate(zip(expected, runs, strict=False)):
        for key in ("ep", "size_in", "win_in", "size_out", "verdict"):
            if key in want and getattr(run, key) != want[key]:
                yield f"{side}: runs[{i}].{key}: expected {want[key]!r}, got {getattr(run, key)!r}"
        if "task" in want and run.ctx.task != want["task"]:
            yield f"{side}: runs[{i}].ctx.task: expected event {want['task']!r}, got {run.ctx.task!r}"
        if "steps" in want:
            steps = want["steps"]
            if len(run.steps) != len(steps):
                yield f"{side}: runs[{i}].steps: expected {len(steps)} steps, got {len(run.steps)}"
            for j, (want_step, step) in enumerate(zip(steps, run.steps, strict=False)):
                for key in STEP_KEYS:
                    if key in want_step and getattr(step, key) != want_step[key]:
                        yield (f"{side}: runs[{i}].steps[{j}].{key}: expected {want_step[key]!r}, "
                               f"got {getattr(step, key)!r}")


def _data_problem(want: Pattern, got: Data) -> str:
    """Why `got` does not match `want`, or "" when it does."""
    got_known = got.known_mask()
    if len(got) != len(want):
        shown = _clip(_show(got.raw, got_known))
        return f"expected {len(want)} bytes {_clip(want.text())}, got {len(got)} bytes {shown}"
    for i in range(len(want)):
        if want.known[i] and (not got_known[i] or got.raw[i] != want.raw[i]):
            lo, hi = max(0, i - EXCERPT), i + EXCERPT
            why = "unknown" if not got_known[i] else repr(chr(got.raw[i]) if 32 <= got.raw[i] < 127 else got.raw[i])
            return (f"differs at byte {i} (expected {chr(want.raw[i])!r}, got {why}): "
                    f"expected …{_show(want.raw[lo:hi], want.known[lo:hi])}…, "
                    f"got …{_show(got.raw[lo:hi], got_known[lo:hi])}…")
    return ""


# --------------------------------------------------------------------------------------
# Helpers


def _show(raw: bytes, known: bytes | bytearray) -> str:
    """Bytes as the seeds write them: printable ASCII as is, "?" unknown, \\xNN otherwise."""
    out = []
    for b, k in zip(raw, known, strict=True):
        if not k:
            out.append("?")
        elif 32 <= b < 127 and b != WILDCARD:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_sizes(runs: tuple[Run, ...]) -> str:
    return " ".join(f"({r.size_in},{r.win_in})" for r in runs[:16]) + (" …" if len(runs) > 16 else "")


def _describe(case: Case, index: int) -> str:
    event = case.events[index]
    ep = getattr(event, "ep", "")
    return f"{event.op} {ep}".strip()


def _event(o: Outcome, index: int) -> Any:
    return o.events[index] if index < len(o.events) else None


def _by_event(case: Case, table: Any, key: str) -> list[tuple[int, Any]]:
    if not isinstance(table, Mapping):
        raise ExpectedError(key, "must be an object keyed by event index")
    out = []
    for name, value in table.items():
        if not (isinstance(name, str) and name.isdigit() and int(name) < len(case.events)):
            raise ExpectedError(f"{key}.{name}", f"must be an event index 0..{len(case.events) - 1}")
        out.append((int(name), value))
    return out


def _by_endpoint(case: Case, table: Any, key: str) -> list[tuple[str, Any]]:
    if not isinstance(table, Mapping):
        raise ExpectedError(key, "must be an object keyed by endpoint name")
    for name in table:
        if name not in case.endpoints():
            raise ExpectedError(f"{key}.{name}", f"must be one of {', '.join(case.endpoints())}")
    return list(table.items())


def _check_int(value: Any, path: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ExpectedError(path, f"must be an integer, got {value!r}")


def _check_bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise ExpectedError(path, f"must be true or false, got {value!r}")


def _check_ret(value: Any, path: str) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.startswith("E"))):
        raise ExpectedError(path, f"must be an integer or an errno name, got {value!r}")


def _list_of(value: Any, path: str, each: Any) -> None:
    if not isinstance(value, list):
        raise ExpectedError(path, "must be a list")
    for i, item in enumerate(value):
        each(item, f"{path}[{i}]")


def _check_run(value: Any, path: str) -> None:
    if not isinstance(value, Mapping):
        raise ExpectedError(path, "must be an object")
    for key, item in value.items():
        if key not in RUN_KEYS:
            raise ExpectedError(f"{path}.{key}", f"unknown key (known: {', '.join(RUN_KEYS)})")
        if key == "ep":
            if not isinstance(item, str):
                raise ExpectedError(f"{path}.ep", "must be an endpoint name")
        elif key == "task":
            _check_int(item, f"{path}.task")
        elif key == "steps":
            if not isinstance(item, list):
                raise ExpectedError(f"{path}.steps", "must be a list")
            for j, step in enumerate(item):
                if not isinstance(step, Mapping) or any(k not in STEP_KEYS for k in step):
                    raise ExpectedError(f"{path}.steps[{j}]", "must be an object with only rc and win")
                for k, v in step.items():
                    _check_int(v, f"{path}.steps[{j}].{k}")
        else:
            _check_int(item, f"{path}.{key}")
