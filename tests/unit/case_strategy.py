"""Hypothesis strategies for ANY valid Case (and any Outcome, at the end): every step and event kind,
raw u32/u64 values, meta, sockopts, both payload patterns, up to the format's limits.

This is the format's strategy, not the fuzzer's (diffuzz/engine/strategies.py draws from the generator's
distribution): it exists to check that whatever the format allows survives JSON and loading unchanged.
Sizes are drawn mostly small with the limits themselves mixed in, so a run stays fast but the edges are hit.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from diffuzz.contract.case import (
    FAMILIES,
    LAST_RC,
    MAP_TYPES,
    MAX_EVENTS,
    MAX_IOV,
    MAX_MAP_SIZE,
    MAX_PAIRS,
    MAX_PROGRAMS,
    MAX_RECV,
    MAX_SEND,
    MAX_SPLICE,
    MAX_STEPS,
    MAX_WRITE,
    PATTERNS,
    SEND_FLAGS,
    SHUT_HOW,
    SK_DROP,
    SK_PASS,
    SPLICE_FLAGS,
    U32,
    U64,
    ApplyBytes,
    Attach,
    Case,
    Close,
    CorkBytes,
    Detach,
    Fionread,
    Invocation,
    MapDelete,
    MapEntry,
    MapInsert,
    MapSpec,
    Payload,
    PopData,
    PullData,
    PushData,
    Recv,
    Redirect,
    Send,
    SendFile,
    SendMsg,
    Shutdown,
    SockOpt,
    Splice,
    Write,
)
from diffuzz.contract.outcome import Data, Endpoint, EventResult, Outcome, Run, RunContext, StepRecord


def _sized(hi: int, lo: int = 0) -> st.SearchStrategy[int]:
    """Mostly small values, plus the bounds and anything in between."""
    return st.one_of(st.integers(lo, min(hi, lo + 64)), st.sampled_from([lo, hi]), st.integers(lo, hi))


u32 = st.one_of(st.integers(0, 64), st.sampled_from([U32, U32 - 1, 1 << 31]), st.integers(0, U32))
u64 = st.one_of(st.integers(0, 64), st.sampled_from([U64, U32, U32 + 1, 1 << 63]), st.integers(0, U64))


def _flag_names(table: dict[str, int] | Any) -> st.SearchStrategy[tuple[str, ...]]:
    """Distinct flag names in any order (the format keeps the order as written)."""
    return st.lists(st.sampled_from(sorted(table)), unique=True, max_size=len(table)).map(tuple)


steps = st.one_of(
    st.builds(ApplyBytes, bytes=u64),
    st.builds(CorkBytes, bytes=u64),
    st.builds(PullData, start=u64, end=u64, flags=u64),
    st.builds(PushData, start=u64, len=u64, flags=u64),
    st.builds(PopData, start=u64, len=u64, flags=u64),
    st.builds(Write, offset=u32, data=st.binary(min_size=1, max_size=MAX_WRITE)),
    st.builds(Redirect, key=u32, flags=u64),
)

verdicts = st.one_of(st.sampled_from([SK_PASS, SK_DROP, LAST_RC]), u32)

invocations = st.builds(Invocation, steps=st.lists(steps, max_size=MAX_STEPS).map(tuple), verdict=verdicts)


def _iov() -> st.SearchStrategy[tuple[int, ...]]:
    """1..MAX_IOV lengths adding up to at most MAX_SEND."""
    small = st.lists(_sized(4096), min_size=1, max_size=MAX_IOV)
    big = st.lists(st.integers(0, MAX_SEND // MAX_IOV), min_size=1, max_size=MAX_IOV)
    edge = st.just([MAX_SEND])
    return st.one_of(small, big, edge).map(tuple)


def events(endpoints: tuple[str, ...]) -> st.SearchStrategy[Any]:
    ep = st.sampled_from(endpoints)
    return st.one_of(
        st.builds(Send, ep=ep, len=_sized(MAX_SEND), flags=_flag_names(SEND_FLAGS)),
        st.builds(SendMsg, ep=ep, iov=_iov(), flags=_flag_names(SEND_FLAGS)),
        st.builds(SendFile, ep=ep, len=_sized(MAX_SEND)),
        st.builds(Splice, ep=ep, len=_sized(MAX_SPLICE), flags=_flag_names(SPLICE_FLAGS)),
        st.builds(Recv, ep=ep, len=_sized(MAX_RECV), peek=st.booleans()),
        st.builds(Fionread, ep=ep),
        st.builds(Close, ep=ep, rst=st.booleans()),
        st.builds(Shutdown, ep=ep, how=st.sampled_from(sorted(SHUT_HOW))),
        st.builds(MapDelete, key=u32),
        st.builds(MapInsert, key=u32, ep=ep, flags=u64),
        st.just(Detach()),
        st.just(Attach()),
    )


# meta is free-form JSON for people; NaN (not equal to itself) and infinity (not JSON) are left out.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
metas = st.dictionaries(st.text(max_size=12), json_values, max_size=4)

buffer_sizes = st.one_of(st.none(), st.integers(1, 1 << 30))


@st.composite
def cases(draw: Any, max_events: int = 24) -> Case:
    """Any valid Case.  max_events keeps examples quick; `cases(MAX_EVENTS)` reaches the limit."""
    pairs = draw(st.one_of(st.integers(1, 3), st.integers(1, MAX_PAIRS)))
    endpoints = tuple(f"{side}{i}" for i in range(pairs) for side in ("c", "p"))
    ep = st.sampled_from(endpoints)
    return Case(
        pairs=pairs,
        map=MapSpec(type=draw(st.sampled_from(MAP_TYPES)), size=draw(_sized(MAX_MAP_SIZE, 1))),
        inserts=tuple(draw(st.lists(st.builds(MapEntry, key=u32, ep=ep), max_size=2 * MAX_PAIRS * 4))),
        program=tuple(draw(st.lists(invocations, min_size=1, max_size=min(MAX_PROGRAMS, 6)))
                      if draw(st.booleans()) else draw(st.lists(invocations, min_size=1, max_size=MAX_PROGRAMS))),
        events=tuple(draw(st.lists(events(endpoints), max_size=min(max_events, MAX_EVENTS)))),
        family=draw(st.sampled_from(FAMILIES)),
        fresh_thread=draw(st.booleans()),
        payload=Payload(pattern=draw(st.sampled_from(PATTERNS)), seed=draw(u64)),
        sockopts=tuple(draw(st.lists(st.builds(SockOpt, ep=ep, sndbuf=buffer_sizes, rcvbuf=buffer_sizes),
                                     max_size=2 * MAX_PAIRS))),
        name=draw(st.text(max_size=30)),
        meta=draw(metas),
    )


# --------------------------------------------------------------------------------------
# Outcomes (the shape both sides fill), for the Outcome JSON and compare() tests.


@st.composite
def datas(draw: Any, max_size: int = 40, wildcards: bool = True) -> Data:
    """Data in its canonical form: bytes under an unknown range are 0, ranges sorted and not touching
    (the form Data.from_json produces, so JSON round trips are exact)."""
    raw = bytearray(draw(st.binary(max_size=max_size)))
    unknown: list[tuple[int, int]] = []
    if wildcards and raw:
        cuts = sorted(draw(st.sets(st.integers(0, len(raw)), max_size=6)))
        for start, end in zip(cuts[::2], cuts[1::2], strict=False):
            if start < end and not (unknown and unknown[-1][1] >= start):
                unknown.append((start, end))
                raw[start:end] = bytes(end - start)
    return Data(bytes(raw), tuple(unknown))


rets = st.one_of(st.integers(0, 1 << 20), st.sampled_from(["EAGAIN", "EPIPE", "EINVAL", "ENOMEM", "E200"]))
ep_names = st.sampled_from(["c0", "p0", "c1", "p1"])
windows = st.one_of(st.none(), st.integers(0, 1 << 16))

event_results = st.builds(EventResult, ret=st.one_of(st.none(), rets), sigpipe=st.booleans(),
                          data=st.one_of(st.none(), datas()))
run_contexts = st.builds(RunContext, family=st.sampled_from([2, 10]), local=ep_names, remote=ep_names,
                         task=st.one_of(st.integers(0, MAX_EVENTS), st.just("?1234")))
runs = st.builds(
    Run, ep=ep_names, size_in=st.integers(0, MAX_SEND), win_in=windows,
    steps=st.lists(st.builds(StepRecord, rc=st.integers(-(1 << 63), (1 << 63) - 1), win=windows),
                   max_size=4).map(tuple),
    size_out=st.integers(0, MAX_SEND), verdict=u32, ctx=run_contexts,
)
endpoint_states = st.builds(Endpoint, rx=datas(), fionread=st.one_of(st.none(), st.integers(0, MAX_SEND)),
                            end=st.sampled_from(["EAGAIN", "EOF", "ECONNRESET", "closed"]))


@st.composite
def outcomes(draw: Any) -> Outcome:
    return Outcome(
        side=draw(st.sampled_from(["kernel", "model"])),
        inserts=tuple(draw(st.lists(rets, max_size=4))),
        events=tuple(draw(st.lists(event_results, max_size=6))),
        runs=tuple(draw(st.lists(runs, max_size=4))),
        run_count=draw(st.integers(0, 1000)),
        endpoints=draw(st.dictionaries(ep_names, endpoint_states, max_size=4)),
        hang=draw(st.booleans()),
        notes=draw(metas),
    )
