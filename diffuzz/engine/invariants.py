"""The kernel's promises, checked on every outcome without the model: the second oracle.

The model follows the kernel's logic, bugs included (K1, K2 are reproduced by it), so a
comparison alone counts such a bug as agreement.  Each Invariant here is a promise of the
socket API or of sk_msg's documentation, with where it is written; `broken(case, outcome)`
lists the promises an outcome breaks, kernel side and model side alike.

A model outcome may break one only where the model knowingly copies a documented kernel bug:
the model names the bug in its notes (`kernel_bugs`, set where sim/ reproduces it) and
KNOWN_BUGS says which promise that bug breaks.  Anything else the model breaks is a model bug.

The kernel log (the third oracle) arrives as the kernel outcome's notes["kernel_log"] (the
lines the kernel printed while the case ran, kernel_runner/kmsg.py); KMSG_TABLE says which
lines count, as syzkaller's report table does: data, not code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from diffuzz.contract.case import (
    BPF_F_INGRESS,
    SEND_TYPES,
    U32,
    Attach,
    Case,
    Close,
    Detach,
    Fionread,
    MapDelete,
    MapInsert,
    PopData,
    PushData,
    Recv,
    Redirect,
    Shutdown,
    Write,
)
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.provenance import MIN_RUN, Streams, Trace, sender_streams, trace, untraced_heads


class Seen:
    """One outcome of one case, as the checks read it; the byte trace is computed once."""

    def __init__(self, case: Case, outcome: Outcome, streams: Streams | None) -> None:
        self.case = case
        self.outcome = outcome
        self.streams = streams
        self._trace: Trace | bool | None = False
        self._made: int | bool | None = False

    def made(self) -> int | None:
        """program_bytes(case, outcome), computed once."""
        if self._made is False:
            self._made = program_bytes(self.case, self.outcome)
        return self._made  # type: ignore[return-value]

    def trace(self) -> Trace | None:
        if self._trace is False:
            self._trace = trace(self.case, self.outcome, self.streams)
        return self._trace  # type: ignore[return-value]


@dataclass(frozen=True)
class Invariant:
    name: str
    promise: str
    source: str
    check: Callable[[Seen], Iterator[str]]  # one detail per breach


@dataclass(frozen=True)
class Broken:
    invariant: str
    detail: str


# Errors a non-blocking recv on a connected TCP socket may return (recv(2), tcp(7)); EBADF is the
# runner's answer for an endpoint the case closed.  EFAULT on a valid buffer is not among them.
RECV_ERRNOS = frozenset({"EAGAIN", "ECONNRESET", "ENOTCONN", "ETIMEDOUT", "EINTR", "EBADF"})

# Which kernel log lines are a crash finding: (pattern, title).  The first match names it.
KMSG_TABLE: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), t) for p, t in (
    (r"^WARNING: ", "WARNING"),
    (r"^BUG: KASAN: ", "KASAN"),
    (r"^BUG: ", "BUG"),
    (r"kernel BUG at ", "BUG"),
    (r"^Oops", "Oops"),
    (r"general protection fault", "general protection fault"),
    (r"refcount_t: ", "refcount"),
    (r"^UBSAN: ", "UBSAN"),
    (r"^Kernel panic", "panic"),
))


def _return_bound(seen: Seen) -> Iterator[str]:
    case, o = seen.case, seen.outcome
    for i, (ev, res) in enumerate(zip(case.events, o.events, strict=False)):
        if isinstance(ev, SEND_TYPES) and isinstance(res.ret, int) and res.ret > ev.size:
            yield f"events[{i}] {ev.op}({ev.ep}, {ev.size} bytes) returned {res.ret}"
        elif isinstance(ev, SEND_TYPES) and res.ret == 0 and ev.size:
            # send(2): a stream send takes at least one byte or fails; 0 only for 0 bytes.
            yield f"events[{i}] {ev.op}({ev.ep}, {ev.size} bytes) returned 0"


def _errno_sanity(seen: Seen) -> Iterator[str]:
    case, o = seen.case, seen.outcome
    events = case.events
    for i, (ev, res) in enumerate(zip(events, o.events, strict=False)):
        if isinstance(ev, Recv) and isinstance(res.ret, str) and res.ret not in RECV_ERRNOS:
            yield f"events[{i}] recv({ev.ep}{', MSG_PEEK' if ev.peek else ''}) failed with {res.ret}"
        if isinstance(ev, Fionread) and isinstance(res.ret, str) and res.ret != "EBADF":
            yield f"events[{i}] fionread({ev.ep}) failed with {res.ret}"
        if isinstance(ev, Fionread) and isinstance(res.ret, int) and res.ret > 0:
            # The next event on this socket, if it is a recv, must get data (tcp(7): SIOCINQ is
            # the amount of unread data) -- unless the map or a socket changed in between: a
            # socket leaving the map loses its ingress queue by design (spec §9.1).
            nxt = _next_on(events, i, ev.ep)
            if nxt is not None and nxt < len(o.events) and isinstance(events[nxt], Recv) and events[nxt].len:
                got = o.events[nxt].ret
                if not (isinstance(got, int) and got > 0):
                    yield f"events[{i}] fionread({ev.ep}) = {res.ret}, then events[{nxt}] recv returned {got}"
    for name, ep in o.endpoints.items():
        if ep.end not in ("EAGAIN", "EOF", "closed") and ep.end not in RECV_ERRNOS:
            yield f"{name}: the final drain's recv failed with {ep.end}"
        if ep.fionread and not len(ep.rx):
            yield f"{name}: FIONREAD {ep.fionread} before the drain, and the drain read nothing ({ep.end})"


_CHANGES = (MapDelete, MapInsert, Detach, Attach, Close, Shutdown)


def _next_on(events: tuple[Any, ...], i: int, ep: str) -> int | None:
    """The index of the next event on socket ep after event i, or None when there is none or
    the map or a socket changes first."""
    for j in range(i + 1, len(events)):
        if isinstance(events[j], _CHANGES):
            return None
        if getattr(events[j], "ep", None) == ep:
            return j
    return None


def program_bytes(case: Case, o: Outcome) -> int | None:
    """How many delivered bytes may be untraceable without breaking a promise: what the recorded
    runs' successful push_data calls inserted and their write steps stored, plus slack where the
    trace goes blind: 2 * MIN_RUN bytes for every run (its apply boundary can leave a piece
    shorter than MIN_RUN on either side, e.g. one-byte sends or apply windows) and for every
    successful push, pop or write.  None when some runs were not recorded (past
    MAX_RUN_RECORDS), so the bound is unknown."""
    if o.run_count > len(o.runs):
        return None
    total = 0
    for index, run in enumerate(o.runs):
        total += 2 * MIN_RUN
        steps = case.invocation(index).steps
        for step, rec in zip(steps, run.steps, strict=False):
            if rec.rc != 0:
                continue
            if isinstance(step, PushData):
                total += (step.len & U32) + 2 * MIN_RUN
            elif isinstance(step, Write):
                total += len(step.data) + 2 * MIN_RUN
            elif isinstance(step, PopData):
                total += 2 * MIN_RUN
    return total


def _provenance(seen: Seen) -> Iterator[str]:
    t = seen.trace()
    if t is None:
        return
    yield from t.disorder
    if not (t.untraced or t.twice_bytes or t.delivered > t.accepted):
        return  # everything traced once and within what was accepted: no budget to compute
    made = seen.made()
    if made is not None and t.untraced > made:
        where = ", ".join(f"{ep} at byte {off} ({n} B)" for ep, off, n in t.untraced_at[:3])
        yield (f"{t.untraced} delivered bytes match no send, more than the {made} the program pushed or wrote "
               f"(with slack): {where}")
    if made is not None and t.untraced + t.twice_bytes > made:
        yield from t.twice
    if made is not None and t.delivered > t.accepted + made:
        yield f"{t.delivered} bytes delivered, more than the {t.accepted} accepted plus {made} pushed"


def _accounting(seen: Seen) -> Iterator[str]:
    t = seen.trace()
    if t is None:
        return
    for ep, n in sorted(t.per_sender.items()):
        if n - t.accepted_by.get(ep, 0) >= MIN_RUN:  # under MIN_RUN: a match's chance overrun (provenance.py)
            yield f"{n} bytes of {ep}'s sends were delivered, but its sends accepted {t.accepted_by.get(ep, 0)}"


def _program_view(seen: Seen) -> Iterator[str]:
    if seen.streams is None:
        return
    found = untraced_heads(seen.outcome, seen.streams)
    if not found:
        return
    made = seen.made()
    n = sum(length for _, _, length in found)
    if made is not None and n > made:
        where = ", ".join(f"runs[{i}] at byte {off} ({length} B)" for i, off, length in found[:3])
        yield f"the program read {n} bytes no send sent, more than the {made} it pushed or wrote: {where}"


def _kernel_log(seen: Seen) -> Iterator[str]:
    for line in seen.outcome.notes.get("kernel_log", ()):
        title = kmsg_title(str(line))
        if title:
            yield f"{title}: {line}"


def kmsg_title(line: str) -> str | None:
    for pattern, title in KMSG_TABLE:
        if pattern.search(line):
            return title
    return None


def _termination(seen: Seen) -> Iterator[str]:
    if seen.outcome.hang:
        yield "the case did not finish (a hang)"


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("return_bound", "no send, sendmsg, sendfile or splice returns more bytes than it was given, or 0 "
              "for a non-empty send", "send(2), sendmsg(2): the number of bytes sent (a stream send takes at least "
              "one byte or fails); sendfile(2), splice(2): at most count", _return_bound),
    Invariant("errno_sanity", "recv, peek and FIONREAD on a valid buffer fail only with errors the socket API "
              "lists (never EFAULT); a recv after FIONREAD n > 0 returns data",
              "recv(2) ERRORS (EFAULT: the buffer is outside the address space); tcp(7) SIOCINQ", _errno_sanity),
    Invariant("byte_provenance", "every delivered byte was sent (at its offset) or pushed; from one sender each "
              "of a receiver's two queues (ingress_msg, TCP) is in send order; no byte twice; no more than "
              "accepted plus pushed",
              "tcp(7) (a reliable, ordered byte stream); bpf-helpers(7) bpf_msg_push_data, bpf_msg_redirect_map; "
              "spec §7.1 (ingress_msg, then TCP)", _provenance),
    Invariant("accounting", "per sending socket, the bytes delivered from its sends are at most what its sends "
              "accepted (returned)", "send(2): the return value is the number of bytes sent", _accounting),
    Invariant("program_view", "the bytes a run's window shows the program (its first RUN_HEAD bytes on entry) were "
              "sent or put there by the program, never bytes from nowhere",
              "bpf-helpers(7): msg->data..data_end is the message's data; spec §4.1", _program_view),
    Invariant("kernel_log", "no WARN, BUG, Oops, KASAN, refcount or general protection line while a case runs",
              "the kernel's own checks (syzkaller's oracle)", _kernel_log),
    Invariant("termination", "every case finishes", "a syscall with MSG_DONTWAIT or a bounded send returns",
              _termination),
)
BY_NAME: Mapping[str, Invariant] = {inv.name: inv for inv in INVARIANTS}

# The documented kernel bugs the model reproduces on purpose, and the promise each breaks
# (docs/kernel-notes.md, corpus/kernel-bugs/).  sim/ names the bug in the outcome's notes.
KNOWN_BUGS: Mapping[str, tuple[str, ...]] = {
    "K1": ("return_bound",),  # tcp_bpf_send_verdict's DROP arithmetic: send() returns more than len
    "K2": ("errno_sanity",),  # an empty ingress message: recv fails with EFAULT, data behind it hidden
    "K3": ("accounting",),  # the DROP arithmetic counts an earlier run's pushed bytes as the caller's
    # sk_msg_memcopy_from_iter starts at a stale sg.curr/copybreak (after a full ring's ENOSPC, or
    # a partial push of the cork's last element): a send's bytes overwrite earlier ones and the
    # bytes it reserved are delivered uninitialised, or a send returns 0 (sim/page_frag.py).
    # The uninitialised bytes are whatever the page held before: another socket's dropped bytes
    # (accounting), or the sender's own already delivered ones (byte_provenance, "twice").
    "K4": ("byte_provenance", "return_bound", "accounting"),
    # tcp_bpf_sendmsg's loop never ends: each run pushes (or pops) and a cork or a small apply
    # re-runs the program on what is left, or the ring is full and nothing moves (sim/tcp_bpf.py
    # ModelHang).  The host's zone keeps such cases out; in a VM they run (docs/zone.md).
    "K5": ("termination",),
}

# What a case's program must hold for each documented bug to be reachable at all, from the code
# paths docs/kernel-notes.md names: alternatives, each a set of needs (helper ops, and
# "redirect_ingress" for a redirect with BPF_F_INGRESS).  A necessary condition, not a trigger.
KNOWN_BUG_NEEDS: Mapping[str, tuple[frozenset[str], ...]] = {
    # tcp_bpf_send_verdict's `delta`: a run changed the message's size.
    "K1": (frozenset({"push_data"}), frozenset({"pop_data"})),
    # Only a pop can empty a message, and only an ingress redirect queues it on ingress_msg.
    "K2": (frozenset({"pop_data", "redirect_ingress"}),),
    # The DROP and error branches subtract pushed (or popped) bytes as the caller's.
    "K3": (frozenset({"push_data"}), frozenset({"pop_data"})),
    # Both forms (a full ring, a partial push) copy into a corked message.
    "K4": (frozenset({"cork_bytes"}),),
    # A run that pushes or pops, re-run by a cork or a small apply; or a full corked ring.
    "K5": (frozenset({"cork_bytes"}), frozenset({"push_data", "apply_bytes"}),
           frozenset({"pop_data", "apply_bytes"})),
}


def reachable_promises(case: Case) -> frozenset[str]:
    """The promises the documented bugs this case's program can reach (KNOWN_BUG_NEEDS) break."""
    has = {s.op for inv in case.program for s in inv.steps}
    if any(isinstance(s, Redirect) and s.flags & BPF_F_INGRESS for inv in case.program for s in inv.steps):
        has.add("redirect_ingress")
    return frozenset(name for bug, needs in KNOWN_BUG_NEEDS.items() if any(n <= has for n in needs)
                     for name in KNOWN_BUGS[bug])


def broken(case: Case, outcome: Outcome, streams: Streams | bool | None = False) -> list[Broken]:
    """Every promise this outcome breaks, in table order.  `streams`: the case's
    provenance.sender_streams, when the caller already has them (both sides share them)."""
    seen = Seen(case, outcome, sender_streams(case) if streams is False else streams)  # type: ignore[arg-type]
    return [Broken(inv.name, detail) for inv in INVARIANTS for detail in inv.check(seen)]


def unexplained(case: Case, model: Outcome, streams: Streams | bool | None = False) -> list[Broken]:
    """The promises a model outcome breaks that no bug it names (notes["kernel_bugs"]) explains:
    each one is a model bug."""
    allowed = {name for bug in model.notes.get("kernel_bugs", ()) for name in KNOWN_BUGS.get(bug, ())}
    return [b for b in broken(case, model, streams) if b.invariant not in allowed]
