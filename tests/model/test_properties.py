"""Hypothesis property tests: invariants the model must keep on any case.

- Per socket, every byte accepted into an sk_msg is accounted for:
  accepted + pushed - popped == delivered + freed + still corked.
- msg->size is never negative, equals the sum of the element lengths, and a message never
  holds more than MAX_MSG_FRAGS elements (in the deterministic zone, spec §10).
- The model is deterministic, and its Outcome is well formed (unknown ranges sorted and
  inside the data; a recv's data length equals its return value).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import sim
from diffuzz.contract.case import (
    ApplyBytes,
    Case,
    Close,
    CorkBytes,
    Fionread,
    Invocation,
    MapDelete,
    MapEntry,
    MapInsert,
    MapSpec,
    PopData,
    PullData,
    PushData,
    Recv,
    Redirect,
    Send,
    SendFile,
    SendMsg,
    Shutdown,
    Splice,
    Write,
)
from diffuzz.contract.outcome import Data
from sim.helpers import sk_msg_local
from sim.sk_msg import MAX_MSG_FRAGS
from sim.syscalls import run_world
from sim.world import World

EPS = ("c0", "p0", "c1", "p1")
small = st.integers(0, 40)
arg = st.one_of(small, st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32, 2**64 - 1]))

steps = st.one_of(
    st.builds(ApplyBytes, arg),
    st.builds(CorkBytes, st.one_of(small, st.just(0))),
    st.builds(PullData, small, small),
    st.builds(PushData, small, st.integers(0, 8)),
    st.builds(PopData, small, st.one_of(small, arg)),
    st.builds(Write, small, st.binary(min_size=1, max_size=4)),
    st.builds(Redirect, st.integers(0, 5), st.sampled_from([0, 0, 1, 2])),
)


@st.composite
def programs(draw: st.DrawFn) -> tuple[Invocation, ...]:
    n = draw(st.integers(1, 4))
    invs = [Invocation(tuple(draw(st.lists(steps, max_size=4))), draw(st.sampled_from([1, 1, 0, 2, "last_rc"])))
            for _ in range(n - 1)]
    # The last list repeats for ever: keep it free of push (a push on every run of a small
    # apply window never empties the message, a kernel loop, not a property).
    last = draw(st.lists(steps.filter(lambda s: not isinstance(s, PushData)), max_size=3))
    invs.append(Invocation(tuple(last), draw(st.sampled_from([1, 0, "last_rc"]))))
    return tuple(invs)


ep = st.sampled_from(EPS)
events = st.one_of(
    st.builds(Send, ep, st.integers(0, 200), st.sampled_from([(), ("MSG_MORE",), ("MSG_NOSIGNAL",)])),
    st.builds(SendMsg, ep, st.lists(st.integers(0, 50), min_size=1, max_size=3).map(tuple)),
    st.builds(SendFile, ep, st.integers(0, 300)),
    st.builds(Splice, ep, st.integers(0, 300)),
    st.builds(Recv, ep, st.integers(0, 100), st.booleans()),
    st.builds(Fionread, ep),
    st.builds(Close, ep, st.booleans()),
    st.builds(Shutdown, ep, st.sampled_from(["SHUT_RD", "SHUT_WR", "SHUT_RDWR"])),
    st.builds(MapDelete, st.integers(0, 5)),
    st.builds(MapInsert, st.integers(0, 5), ep, st.sampled_from([0, 1, 2, 3])),
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    keys = draw(st.permutations(range(4)))
    return Case(
        pairs=2,
        map=MapSpec(draw(st.sampled_from(["sockmap", "sockhash"])), 6),
        inserts=tuple(MapEntry(k, e) for k, e in zip(keys, EPS, strict=True) if draw(st.booleans()) or k < 2),
        program=draw(programs()),
        events=tuple(draw(st.lists(events, max_size=10))),
        family=draw(st.sampled_from(["ipv4", "ipv6"])),
        fresh_thread=draw(st.booleans()),
    )


def _well_formed(d: Data) -> None:
    prev = 0
    for s, e in d.unknown:
        assert prev <= s < e <= len(d.raw)
        prev = e


@settings(max_examples=300)
@given(cases())
def test_bytes_are_accounted_for(case: Case) -> None:
    w = World(case)
    w.audit = []
    o = run_world(w)
    if o.hang:
        return
    for sk in w.socks.values():
        accepted, pushed, popped, delivered, freed = sk.acct
        corked = sk.psock.cork.size if sk.psock is not None and sk.psock.cork is not None else 0
        assert accepted + pushed - popped == delivered + freed + corked, (sk.name, sk.acct, corked)
        assert min(sk.acct) >= 0
    for size, total, nelems in w.audit:
        assert size == total >= 0
        assert nelems <= MAX_MSG_FRAGS


@settings(max_examples=200)
@given(cases())
def test_deterministic_and_well_formed(case: Case) -> None:
    a = sim.run(case)
    assert a == sim.run(case)
    assert a.run_count >= len(a.runs)
    for r in a.runs:
        assert r.size_in >= 0 and r.size_out >= 0
        # The sending socket names itself, or reads port 0 once it reached TCP_CLOSE (kernel-notes N2).
        assert r.ctx.local in (r.ep, sk_msg_local(r.ep, r.ctx.family, True)) and r.ctx.family in (2, 10)
        assert len(r.steps) == len(case.invocation(a.runs.index(r)).steps)
    for ev, res in zip(case.events, a.events, strict=True):
        if res.data is not None:
            _well_formed(res.data)
            assert res.ret == len(res.data)
        if isinstance(ev, (Send, SendMsg, SendFile, Splice)) and isinstance(res.ret, int) and ev.size == 0:
            assert res.ret == 0
    for e in a.endpoints.values():
        _well_formed(e.rx)
        assert (e.end == "closed") == (e.fionread is None)
