"""The Case itself (topology, program, events, payload), the rules both sides share, and its
JSON dump (docs/case-format.md).

Part of the contract (diffuzz/contract/case.py gathers it): imports nothing else of the project.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from diffuzz.contract.events import SEND_TYPES, Event
from diffuzz.contract.limits import ALPHABET, FORMAT_VERSION, SEND_FLAGS, SK_DROP, SK_PASS, CaseError
from diffuzz.contract.program import Invocation, Step, Verdict


@dataclass(frozen=True)
class MapSpec:
    type: str = "sockmap"
    size: int = 16


@dataclass(frozen=True)
class MapEntry:
    """An initial insert: done in list order, after the program is attached."""

    key: int
    ep: str


@dataclass(frozen=True)
class SockOpt:
    """Buffer sizes set on an endpoint right after the pair is connected."""

    ep: str
    sndbuf: int | None = None
    rcvbuf: int | None = None


@dataclass(frozen=True)
class Payload:
    """How send bytes are made, so each delivered byte traces back to its origin.

    alphabet: one running stream "ABC…Zabc…z0…9ABC…" across every send of the case in event
              order (the spec's worked examples use this);
    random:   per send, bytes from random.Random(f"{seed}:{event index}").
    """

    pattern: str = "alphabet"
    seed: int = 0


@dataclass(frozen=True)
class Case:
    pairs: int = 1
    map: MapSpec = field(default_factory=MapSpec)
    inserts: tuple[MapEntry, ...] = ()
    program: tuple[Invocation, ...] = (Invocation(),)
    events: tuple[Event, ...] = ()
    family: str = "ipv4"
    fresh_thread: bool = True
    payload: Payload = field(default_factory=Payload)
    sockopts: tuple[SockOpt, ...] = ()
    name: str = ""
    # Free-form notes for people (expected observables, provenance); no runner reads them.
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # ---- rules both sides share -------------------------------------------------------

    def endpoints(self) -> tuple[str, ...]:
        """Endpoint names: c<i> is the connecting side of pair i, p<i> the accepted side."""
        return tuple(f"{side}{i}" for i in range(self.pairs) for side in ("c", "p"))

    def sender_layout(self) -> str:
        """How the sends map to threads (events.py): "own" (a thread per send), "one" (one named
        thread sends everything) or "shared" (several named threads, or named and own mixed)."""
        threads = {getattr(e, "thread", None) for e in self.events if isinstance(e, SEND_TYPES)}
        if not threads - {None}:
            return "own"
        return "one" if len(threads) == 1 else "shared"

    @property
    def shared_threads(self) -> bool:
        """Some send names its thread (events.py), so a thread may issue several sends."""
        return any(getattr(e, "thread", None) is not None for e in self.events)

    def invocation(self, run_index: int) -> Invocation:
        """Run i (counted over the whole case) runs step list min(i, last)."""
        return self.program[min(run_index, len(self.program) - 1)]

    def payload_for(self, event_index: int) -> bytes:
        """The bytes that event `event_index` (a send of any kind) sends."""
        event = self.events[event_index]
        if not isinstance(event, SEND_TYPES):
            raise CaseError(f"events[{event_index}]", "not a send")
        if self.payload.pattern == "random":
            # Seeding a Random from a string is the cost here (sha512, init_by_array), and the model,
            # the oracle and a minimizer ask for the same sends again: kept on the instance, outside
            # the dataclass fields (equality, hashing and JSON never see it).
            cache: dict[int, bytes] | None = self.__dict__.get("_payloads")
            if cache is None:
                cache = {}
                object.__setattr__(self, "_payloads", cache)
            data = cache.get(event_index)
            if data is None:
                data = cache[event_index] = random.Random(f"{self.payload.seed}:{event_index}").randbytes(event.size)
            return data
        start = sum(e.size for e in self.events[:event_index] if isinstance(e, SEND_TYPES))
        return _alphabet_slice(start + self.payload.seed, event.size)

    def to_json(self, indent: int | None = 2) -> str:
        """Case JSON: one line with indent=None, else the readable layout of the case files."""
        if indent is None:
            return json.dumps(case_to_dict(self), separators=(",", ":"))
        return layout_json(case_to_dict(self))


def layout_json(value: Any, indent: int = 0, used: int = 0, width: int = 110) -> str:
    """JSON where an object or list stays on one line when it fits in `width` columns.

    Case files are read by people in reviews and triage; one event or step per line reads like
    the step list it is.  `used`: columns already taken on the current line.
    """
    flat = json.dumps(value, ensure_ascii=False)
    if used + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            head = f"{pad}{json.dumps(k)}: "
            items.append(head + layout_json(v, indent + 2, len(head), width))
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + layout_json(v, indent + 2, indent + 2, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def peer_of(ep: str) -> str:
    """The other end of ep's TCP connection."""
    return ("p" if ep[0] == "c" else "c") + ep[1:]


def send_flags_value(names: tuple[str, ...]) -> int:
    value = 0
    for name in names:
        value |= SEND_FLAGS[name]
    return value


def _alphabet_slice(start: int, n: int) -> bytes:
    period = len(ALPHABET)
    offset = start % period
    reps = (offset + n) // period + 1
    return (ALPHABET * reps)[offset : offset + n]


# --------------------------------------------------------------------------------------
# JSON: dump


def _step_to_dict(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"op": step.op}
    for f in fields(step):
        value = getattr(step, f.name)
        out[f.name] = value.hex() if isinstance(value, bytes) else value
    return out


def _event_to_dict(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"op": event.op}
    for f in fields(event):
        value = getattr(event, f.name)
        if f.name == "thread" and value is None:
            continue  # no thread named: a thread of its own (the format before threads)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def case_to_dict(case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {"format": FORMAT_VERSION}
    if case.name:
        out["name"] = case.name
    out.update(
        family=case.family,
        map={"type": case.map.type, "size": case.map.size},
        pairs=case.pairs,
        inserts=[{"key": e.key, "ep": e.ep} for e in case.inserts],
        program=[
            {"steps": [_step_to_dict(s) for s in inv.steps], "verdict": _verdict_to_json(inv.verdict)}
            for inv in case.program
        ],
        events=[_event_to_dict(e) for e in case.events],
        fresh_thread=case.fresh_thread,
        payload={"pattern": case.payload.pattern, "seed": case.payload.seed},
    )
    if case.sockopts:
        out["sockopts"] = [
            {k: v for k, v in (("ep", o.ep), ("sndbuf", o.sndbuf), ("rcvbuf", o.rcvbuf)) if v is not None}
            for o in case.sockopts
        ]
    if case.meta:
        out["meta"] = dict(case.meta)
    return out


def _verdict_to_json(verdict: Verdict) -> Verdict:
    return {SK_PASS: "PASS", SK_DROP: "DROP"}.get(verdict, verdict) if isinstance(verdict, int) else verdict


