"""Test-case minimization: the smallest case that still shows the same difference signature.

Shaped after Hypothesis' shrinker (shrinking/common.py): the value being shrunk is immutable
(a frozen Case), every candidate is remembered with its verdict so nothing runs twice, and
passes go from coarse to fine and repeat until a whole round improves nothing:

1. delete events, then program invocations, then steps, then initial inserts, then whole pairs
   (and a leading map_insert event becomes an initial insert)
   (delta debugging: chunks of half the list, then quarters, ... then single items, tried from
   the end, because the end of a case is the part least likely to matter for an early
   difference and deleting it keeps earlier event indexes stable);
2. simplify kinds: sendmsg/sendfile/splice become send, flags go, a send's named thread goes
   (a thread of its own), verdicts become PASS, the case becomes IPv4 / SOCKMAP / alphabet
   payload;
3. shrink numbers: each toward 0, first trying the boundaries (0, 1, the value cut to u32,
   2^31, 2^32-1) because helper bugs live at boundaries and one lucky try saves a binary
   search, then a bounded binary search for the smallest value that still fails.

Candidates outside `admissible` are never run.
The predicate is "same difference signature" (diffuzz.engine.signature.diff_kinds), supplied by the
caller; minimize() does not know about kernels or models.  A candidate is accepted only if the
predicate holds *and* it is strictly smaller by `complexity()`, so the passes cannot cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from diffuzz.contract.case import (
    SK_PASS,
    U32,
    Case,
    Event,
    Invocation,
    MapEntry,
    MapInsert,
    MapSpec,
    Payload,
    Send,
    SendFile,
    SendMsg,
    Splice,
    Step,
)

Predicate = Callable[[Case], bool]

BINARY_SEARCH_TRIES = 20  # enough to land exactly on any u32 boundary from a u64 start
_BOUNDARIES = (0, 1, 1 << 31, U32)


def complexity(case: Case) -> tuple[int, ...]:
    """Shortlex-style size of a case: structure first, then kinds, then numbers."""
    numbers = 0
    kinds = 0
    for ev in case.events:
        kinds += 0 if isinstance(ev, Send) else 1
        for f in fields(ev):
            v = getattr(ev, f.name)
            if f.name == "thread":
                kinds += v is not None  # a named sender thread is a kind, not a number
            elif isinstance(v, bool):
                numbers += v
            elif isinstance(v, int):
                numbers += v
            elif isinstance(v, tuple):
                kinds += sum(1 for x in v if isinstance(x, str))
                numbers += sum(x for x in v if isinstance(x, int))
    n_steps = 0
    for inv in case.program:
        n_steps += len(inv.steps)
        kinds += 0 if inv.verdict == SK_PASS else 1
        for s in inv.steps:
            for f in fields(s):
                v = getattr(s, f.name)
                numbers += len(v) if isinstance(v, bytes) else v
    kinds += (case.family != "ipv4") + (case.map.type != "sockmap") + (case.payload.pattern != "alphabet")
    numbers += case.map.size + case.payload.seed + sum(e.key for e in case.inserts)
    return (len(case.events), n_steps, len(case.program), len(case.inserts), case.pairs, kinds, numbers)


@dataclass
class Stats:
    calls: int = 0  # predicate evaluations (cache misses)
    cache_hits: int = 0
    accepted: int = 0
    seconds: float = 0.0
    timed_out: bool = False


class Minimizer:
    def __init__(self, case: Case, predicate: Predicate, *, max_seconds: float | None = None,
                 admissible: Predicate | None = None, stop: Callable[[], bool] | None = None) -> None:
        self.best = case
        self.stop = stop  # asked before each candidate: a stop signal ends shrinking with the best so far
        self.predicate = predicate
        self.admissible = admissible
        self.cache: dict[Case, bool] = {case: True}
        self.stats = Stats()
        self._deadline = None if max_seconds is None else time.monotonic() + max_seconds

    # ---- the core: try one candidate ----------------------------------------------------

    def out_of_time(self) -> bool:
        late = self._deadline is not None and time.monotonic() > self._deadline
        if late or (self.stop is not None and self.stop()):
            self.stats.timed_out = True
            return True
        return False

    def test(self, cand: Case) -> bool:
        """True (and `best` becomes cand) when cand is smaller and keeps the signature."""
        if cand in self.cache:
            self.stats.cache_hits += 1
            return False  # a cached True is the current best or an older, larger one
        if complexity(cand) >= complexity(self.best) or self.out_of_time():
            return False
        if self.admissible is not None and not self.admissible(cand):
            self.cache[cand] = False  # outside the allowed region (e.g. the §10 zone): never run it
            return False
        self.stats.calls += 1
        try:
            ok = bool(self.predicate(cand))
        except Exception:  # a crash on a candidate is another signature, not this one
            ok = False
        self.cache[cand] = ok
        if ok:
            self.best = cand
            self.stats.accepted += 1
        return ok

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> Case:
        start = time.monotonic()
        passes = (self.drop_events, self.hoist_inserts, self.drop_invocations, self.drop_steps, self.drop_inserts,
                  self.drop_pairs, self.simplify_kinds, self.shrink_numbers)
        while not self.out_of_time():
            before = self.best
            for p in passes:
                p()
                if self.out_of_time():
                    break
            if self.best == before:
                break
        self.stats.seconds = time.monotonic() - start
        return self.best

    # ---- pass 1: delete -------------------------------------------------------------------

    def _ddmin(self, get: Callable[[], Sequence[Any]], rebuild: Callable[[tuple[Any, ...]], Case | None],
               min_len: int = 0) -> None:
        """Delete chunks of halving size, scanning from the end; `get` re-reads the list
        from the current best after every success."""
        chunk = max(1, len(get()) // 2)
        while True:
            i = len(get()) - chunk
            while i >= 0 and not self.out_of_time():
                items = tuple(get())
                if len(items) - chunk >= min_len:
                    cand = rebuild(items[:i] + items[i + chunk:])
                    if cand is not None:
                        self.test(cand)
                i -= chunk
            if chunk == 1:
                return
            chunk //= 2

    def drop_events(self) -> None:
        self._ddmin(lambda: self.best.events, lambda ev: replace(self.best, events=ev))

    def drop_invocations(self) -> None:
        # Deleting step list j shifts which list later runs execute (Case.invocation); that
        # is what we want: "the same bug with fewer distinct runs".
        self._ddmin(lambda: self.best.program, lambda prog: replace(self.best, program=prog), min_len=1)

    def drop_steps(self) -> None:
        for j in range(len(self.best.program)):
            def get(j: int = j) -> tuple[Step, ...]:
                return self.best.program[j].steps if j < len(self.best.program) else ()

            def rebuild(steps: tuple[Step, ...], j: int = j) -> Case:
                return _with_invocation(self.best, j, replace(self.best.program[j], steps=steps))

            self._ddmin(get, rebuild)

    def hoist_inserts(self) -> None:
        """A map_insert as the first event becomes an initial insert (done after the attach,
        before any event, too): one way to write "this socket is in the map", so two cases of
        one cause do not differ by it."""
        while self.best.events and isinstance(ev := self.best.events[0], MapInsert) and not ev.flags:
            if not self.test(replace(self.best, events=self.best.events[1:],
                                     inserts=(*self.best.inserts, MapEntry(ev.key, ev.ep)))) or self.out_of_time():
                return

    def drop_inserts(self) -> None:
        self._ddmin(lambda: self.best.inserts, lambda ins: replace(self.best, inserts=ins))

    def drop_pairs(self) -> None:
        """Remove the last pair when nothing refers to its endpoints any more."""
        while self.best.pairs > 1 and not self.out_of_time():
            case = self.best
            gone = {f"c{case.pairs - 1}", f"p{case.pairs - 1}"}
            used = {e.ep for e in case.inserts} | {getattr(e, "ep", "") for e in case.events}
            used |= {o.ep for o in case.sockopts}
            if used & gone or not self.test(replace(case, pairs=case.pairs - 1)):
                return

    # ---- pass 2: simpler kinds --------------------------------------------------------------

    def simplify_kinds(self) -> None:
        for i in range(len(self.best.events)):
            ev = self.best.events[i] if i < len(self.best.events) else None
            if isinstance(ev, SendMsg | SendFile | Splice):
                self.test(_with_event(self.best, i, Send(ev.ep, ev.size, getattr(ev, "flags", ()) if
                                                         isinstance(ev, SendMsg) else (), ev.thread)))
            ev = self.best.events[i] if i < len(self.best.events) else None
            if getattr(ev, "thread", None) is not None:
                self.test(_with_event(self.best, i, replace(ev, thread=None)))  # a thread of its own
            ev = self.best.events[i] if i < len(self.best.events) else None
            flags = getattr(ev, "flags", None)
            if isinstance(flags, tuple) and flags:
                for k in range(len(flags)):  # one flag at a time: a bug may need exactly one
                    cur = self.best.events[i]
                    if k < len(cur.flags):
                        self.test(_with_event(self.best, i, replace(cur, flags=cur.flags[:k] + cur.flags[k + 1:])))
        for j in range(len(self.best.program)):
            inv = self.best.program[j]
            if inv.verdict != SK_PASS:
                self.test(_with_invocation(self.best, j, replace(inv, verdict=SK_PASS)))
        case = self.best
        if case.family != "ipv4":
            self.test(replace(self.best, family="ipv4"))
        if case.map.type != "sockmap":
            self.test(replace(self.best, map=MapSpec("sockmap", self.best.map.size)))
        if case.payload != Payload():
            self.test(replace(self.best, payload=Payload()))

    # ---- pass 3: numbers --------------------------------------------------------------------

    def shrink_int(self, value: int, make: Callable[[int], Case], lo: int = 0) -> None:
        """Shrink one integer toward lo: boundaries first, then a bounded binary search
        between the largest value known to fail and the smallest known to pass."""
        if value <= lo:
            return
        tries = [lo, lo + 1, value & U32, *_BOUNDARIES, value - 1]
        best = value
        for c in sorted({c for c in tries if lo <= c < best}):
            if c < best and self.test(make(c)):
                best = c
                break
        fail = lo - 1
        for c in sorted({c for c in tries if lo <= c < best}):
            if self.cache.get(make(c)) is False:
                fail = max(fail, c)
        for _ in range(BINARY_SEARCH_TRIES):
            if best - fail <= 1 or self.out_of_time():
                return
            mid = (fail + best) // 2
            if self.test(make(mid)):
                best = mid
            else:
                fail = mid

    def shrink_numbers(self) -> None:
        for i in range(len(self.best.events)):
            for name, value in _int_fields(self.best.events[i]):
                self.shrink_int(value, lambda v, i=i, name=name: _with_event(
                    self.best, i, replace(self.best.events[i], **{name: v})))
            ev = self.best.events[i]
            if isinstance(ev, SendMsg):
                for k in range(len(ev.iov)):
                    self.shrink_int(self.best.events[i].iov[k], lambda v, i=i, k=k: _with_event(
                        self.best, i, replace(self.best.events[i], iov=_set(self.best.events[i].iov, k, v))))
        for j in range(len(self.best.program)):
            for k in range(len(self.best.program[j].steps)):
                for name, value in _int_fields(self.best.program[j].steps[k]):
                    self.shrink_int(value, lambda v, j=j, k=k, name=name: _with_step(self.best, j, k, v, name))
                step = self.best.program[j].steps[k]
                data = getattr(step, "data", None)
                if isinstance(data, bytes) and len(data) > 1:
                    self.shrink_int(len(data), lambda n, j=j, k=k: _with_step_data(self.best, j, k, n), lo=1)
        for i in range(len(self.best.inserts)):
            self.shrink_int(self.best.inserts[i].key, lambda v, i=i: replace(
                self.best, inserts=_set(self.best.inserts, i, replace(self.best.inserts[i], key=v))))
        self.shrink_int(self.best.map.size, lambda v: replace(self.best, map=MapSpec(self.best.map.type, v)), lo=1)


def minimize(case: Case, predicate: Predicate, *, max_seconds: float | None = None,
             admissible: Predicate | None = None, stop: Callable[[], bool] | None = None) -> tuple[Case, Stats]:
    """The smallest case found for which predicate still holds (predicate(case) must).

    `admissible` (optional) rejects candidates without running them: the engine passes the
    deterministic-zone check (diffuzz.engine.zone.zone_violation), so shrinking cannot walk a case
    into a kernel hang or a timing-dependent result."""
    m = Minimizer(case, predicate, max_seconds=max_seconds, admissible=admissible, stop=stop)
    return m.run(), m.stats


# ---- frozen-case surgery ----------------------------------------------------------------


def _set(items: tuple[Any, ...], i: int, value: Any) -> tuple[Any, ...]:
    return (*items[:i], value, *items[i + 1:])


def _with_event(case: Case, i: int, ev: Event) -> Case:
    return replace(case, events=_set(case.events, i, ev))


def _with_invocation(case: Case, j: int, inv: Invocation) -> Case:
    return replace(case, program=_set(case.program, j, inv))


def _with_step(case: Case, j: int, k: int, value: int, name: str) -> Case:
    inv = case.program[j]
    return _with_invocation(case, j, replace(inv, steps=_set(inv.steps, k, replace(inv.steps[k], **{name: value}))))


def _with_step_data(case: Case, j: int, k: int, n: int) -> Case:
    inv = case.program[j]
    step = inv.steps[k]
    return _with_invocation(case, j, replace(inv, steps=_set(inv.steps, k, replace(step, data=step.data[:n]))))


def _int_fields(obj: Any) -> list[tuple[str, int]]:
    """The plain integer fields of a step or event (bools excluded: they are kinds)."""
    return [(f.name, v) for f in fields(obj)
            if isinstance(v := getattr(obj, f.name), int) and not isinstance(v, bool) and f.name != "thread"]
