"""Small Case builders for the model tests: the §12 set-up of the spec by default.

Two loopback pairs (c0<->p0, c1<->p1), all four sockets in a 16-entry sockmap (key 0 = c0,
1 = p0, 2 = c1, 3 = p1), the program attached before the inserts, the alphabet payload.
"""

from __future__ import annotations

from typing import Any

from diffuzz.contract.case import (
    ApplyBytes,
    Case,
    CorkBytes,
    Event,
    Invocation,
    MapEntry,
    MapSpec,
    PopData,
    PullData,
    PushData,
    Recv,
    Redirect,
    Send,
    Step,
    Verdict,
    Write,
)
from diffuzz.contract.outcome import Outcome

PASS = 1
DROP = 0
STD_INSERTS = (MapEntry(0, "c0"), MapEntry(1, "p0"), MapEntry(2, "c1"), MapEntry(3, "p1"))

__all__ = [
    "DROP", "PASS", "ApplyBytes", "CorkBytes", "PopData", "PullData", "PushData", "Recv", "Redirect", "Write",
    "case", "inv", "rets", "run_sizes", "rx", "send",
]


def inv(*steps: Step, verdict: Verdict = PASS) -> Invocation:
    return Invocation(steps=tuple(steps), verdict=verdict)


def send(n: int, ep: str = "c0", flags: tuple[str, ...] = ()) -> Send:
    return Send(ep=ep, len=n, flags=flags)


def case(program: Invocation | tuple[Invocation, ...], events: tuple[Event, ...] | list[Event], **kw: Any) -> Case:
    if isinstance(program, Invocation):
        program = (program,)
    kw.setdefault("pairs", 2)
    kw.setdefault("inserts", STD_INSERTS)
    kw.setdefault("map", MapSpec("sockmap", 16))
    return Case(program=program, events=tuple(events), **kw)


def rets(o: Outcome) -> list[Any]:
    return [e.ret for e in o.events]


def run_sizes(o: Outcome) -> list[tuple[int, int | None]]:
    """(msg->size, data_end - data) on entry, per run: the spec's "runs" notation."""
    return [(r.size_in, r.win_in) for r in o.runs]


def rx(o: Outcome, ep: str) -> str:
    """What ep read in the final drain, as text with '?' for unknown bytes."""
    data = o.endpoints[ep].rx
    out = bytearray(data.raw)
    for s, e in data.unknown:
        out[s:e] = b"?" * (e - s)
    return out.decode("latin-1")
