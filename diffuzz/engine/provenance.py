"""Where each delivered byte came from: the sends' bytes located in what every receiver read.

Only a traceable payload can say this: the "random" pattern, whose bytes are keyed by (case
seed, send index, offset), so any run of MIN_RUN bytes names its send and offset (the alphabet
pattern repeats every 62 bytes and is not traced).  Each receiver's delivered stream (its
non-peek recv events, then the final drain) is cut at the bytes its side leaves unknown; in
each known run, the bytes at a position are looked up in every sender's stream (bytes.find,
the first MIN_RUN bytes) and the match is extended as far as the bytes agree.  A run that
matches no send is untraced (pushed bytes on the kernel side look like that); runs shorter
than MIN_RUN are not traced at all, so nothing is claimed about them (no false alarm from
one-byte apply windows).

Checked over the traced segments (diffuzz/engine/invariants.py uses the result):
- twice:    a sender's byte that reached receivers more than once;
- disorder: from one sender to one receiver the offsets need more than two increasing chains
            (a socket reads two FIFO queues: ingress_msg, then TCP: spec §7.1);
- counts:   per sender the traced bytes against what its sends accepted (returned).
A greedy match can run a few bytes past its true end when the next bytes happen to equal the
stream's (1 in 256 per byte), so overlaps and excesses under MIN_RUN are not evidence.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from diffuzz.contract.case import SEND_TYPES, Case, Recv
from diffuzz.contract.outcome import Data, Outcome

MIN_RUN = 6  # bytes: 2^48 possible values, so a chance match among a case's < 2^17 bytes is ~2^-31


@dataclass
class Trace:
    delivered: int = 0  # bytes every receiver read (peeks not counted)
    accepted: int = 0  # bytes the sends returned (each at most its size)
    accepted_by: dict[str, int] = field(default_factory=dict)
    per_sender: dict[str, int] = field(default_factory=dict)  # traced bytes by sender
    untraced: int = 0  # bytes in stretches of >= MIN_RUN known bytes that match no send
    untraced_at: list[tuple[str, int, int]] = field(default_factory=list)  # (receiver, offset, length)
    twice: list[str] = field(default_factory=list)
    twice_bytes: int = 0
    disorder: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Streams:
    """What each sender sent, as one byte string in event order (the same for both sides of a
    case: made once per case), and where each send starts in it."""

    by_sender: dict[str, bytes]
    sends: tuple[tuple[int, str, int], ...]  # (event index, sender, size)


def sender_streams(case: Case) -> Streams | None:
    """None when the payload cannot be traced (only the "random" pattern can)."""
    if case.payload.pattern != "random":
        return None
    parts: dict[str, list[bytes]] = {}
    sends = []
    for i, ev in enumerate(case.events):
        if isinstance(ev, SEND_TYPES):
            parts.setdefault(ev.ep, []).append(case.payload_for(i))
            sends.append((i, ev.ep, ev.size))
    return Streams({ep: b"".join(p) for ep, p in parts.items()}, tuple(sends))


def trace(case: Case, outcome: Outcome, streams: Streams | None) -> Trace | None:
    """The Trace of this outcome, or None when its payload cannot be traced."""
    if streams is None:
        return None
    t = Trace()
    for i, ep, size in streams.sends:
        ret = outcome.events[i].ret if i < len(outcome.events) else None
        if isinstance(ret, int) and ret > 0:
            n = min(ret, size)
            t.accepted += n
            t.accepted_by[ep] = t.accepted_by.get(ep, 0) + n
    return _trace(case, outcome, streams.by_sender, t)


def untraced_heads(outcome: Outcome, streams: Streams) -> list[tuple[int, int, int]]:
    """(run, offset, length) of every stretch of >= MIN_RUN known bytes in a run's recorded
    window (Run.head: what the program read) that no sender sent."""
    out = []
    for index, run in enumerate(outcome.runs):
        if run.head is None or len(run.head) < MIN_RUN:
            continue
        for base, known in _known_runs([run.head]):
            p = 0
            while len(known) - p >= MIN_RUN:
                hit = _find(streams.by_sender, known[p:p + MIN_RUN])
                if hit is not None:
                    sender, off = hit
                    p += _match_len(known, p, streams.by_sender[sender], off)
                    continue
                q = _untraced_end(known, p, streams.by_sender)
                if q - p >= MIN_RUN:
                    out.append((index, base + p, q - p))
                p = q
    return out


def _find(streams: dict[str, bytes], key: bytes) -> tuple[str, int] | None:
    """The first sender (and offset) whose stream holds key."""
    for sender, stream in streams.items():
        off = stream.find(key)
        if off >= 0:
            return sender, off
    return None


def _untraced_end(run: bytes, p: int, streams: dict[str, bytes]) -> int:
    """Where the untraced stretch starting at p ends: the next offset whose MIN_RUN bytes some
    sender sent, or the end of the run when fewer than MIN_RUN bytes are left."""
    q = p + 1
    while len(run) - q >= MIN_RUN and _find(streams, run[q:q + MIN_RUN]) is None:
        q += 1
    return q if len(run) - q >= MIN_RUN else len(run)


def _received(case: Case, outcome: Outcome) -> dict[str, list[Data]]:
    got: dict[str, list[Data]] = {}
    for ev, res in zip(case.events, outcome.events, strict=False):
        if isinstance(ev, Recv) and not ev.peek and res.data is not None and len(res.data):
            got.setdefault(ev.ep, []).append(res.data)
    for name, ep in outcome.endpoints.items():
        if len(ep.rx):
            got.setdefault(name, []).append(ep.rx)
    return got


def _known_runs(parts: list[Data]) -> list[tuple[int, bytes]]:
    """(offset in the receiver's stream, bytes) of every run of known bytes."""
    out = []
    pos = 0
    for d in parts:
        start = 0
        for a, b in (*d.unknown, (len(d.raw), len(d.raw))):
            if a > start:
                out.append((pos + start, d.raw[start:a]))
            start = b
        pos += len(d.raw)
    return out


def _match_len(a: bytes, i: int, b: bytes, j: int) -> int:
    """Length of the common prefix of a[i:] and b[j:]: the whole rest when it matches (the common
    case), else a binary search with slice compares (C speed, log2 steps)."""
    limit = min(len(a) - i, len(b) - j)
    if a[i:i + limit] == b[j:j + limit]:
        return limit
    lo, hi = 0, limit  # a[i:i+lo] == b[j:j+lo]; a[i:i+hi] != b[j:j+hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[i:i + mid] == b[j:j + mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _trace(case: Case, outcome: Outcome, streams: dict[str, bytes], t: Trace) -> Trace:
    segments: dict[str, list[tuple[int, int, str]]] = {}  # sender -> (start, end, receiver)
    for receiver, parts in sorted(_received(case, outcome).items()):
        t.delivered += sum(len(d) for d in parts)
        order: dict[str, list[int]] = {}
        for base, run in _known_runs(parts):
            p = 0
            while len(run) - p >= MIN_RUN:
                hit = _find(streams, run[p:p + MIN_RUN])
                if hit is None:
                    q = _untraced_end(run, p, streams)
                    if q - p >= MIN_RUN:  # shorter: a piece a pop or an apply boundary left, not evidence
                        t.untraced += q - p
                        t.untraced_at.append((receiver, base + p, q - p))
                    p = q
                    continue
                sender, off = hit
                n = _match_len(run, p, streams[sender], off)
                segments.setdefault(sender, []).append((off, off + n, receiver))
                t.per_sender[sender] = t.per_sender.get(sender, 0) + n
                order.setdefault(sender, []).append(off)
                p += n
        for sender, offs in order.items():
            chains = _chains(offs)
            if chains > 2:
                t.disorder.append(f"{sender} -> {receiver}: the sent offsets arrive in {chains} increasing runs "
                                  f"(at most 2: ingress_msg, then TCP), order {offs[:8]}")
    for sender, segs in segments.items():
        segs.sort()
        end, to = -1, ""
        for b0, b1, r1 in segs:
            overlap = min(end, b1) - b0
            if overlap > 0:
                # Counted once.  Under MIN_RUN: a match that ran on by chance (1 in 256 per byte).
                # Longer: a second copy, or pushed bytes: push_data's new memory is not zeroed and
                # often holds the page's earlier bytes, so the invariant allows as many as the
                # program pushed (diffuzz/engine/invariants.py).
                t.per_sender[sender] -= overlap
                if overlap >= MIN_RUN:
                    t.twice_bytes += overlap
                    t.twice.append(f"{sender}'s bytes {b0}..{min(end, b1)} were delivered twice (to {to} and {r1})")
            if b1 > end:
                end, to = b1, r1
    return t


def _chains(offsets: list[int]) -> int:
    """The fewest increasing subsequences that cover the sequence: the length of its longest
    strictly decreasing subsequence (patience sorting on the negated values)."""
    tails: list[int] = []
    for x in offsets:
        i = bisect.bisect_left(tails, -x)
        if i == len(tails):
            tails.append(-x)
        else:
            tails[i] = -x
    return len(tails)
