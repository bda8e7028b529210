"""The deterministic zone (spec §10).  By default (`GenConfig.deterministic`) cases stay where the
kernel's result does not depend on timing, memory layout or allocation luck, so a difference is
a finding and not noise.  Each restriction, and the §10 row it answers:
- Total bytes sent per case <= 40 KiB (`max_total_bytes`): every message, corked totals
  included, plus at most 6 pushes of 4 KiB stays <= 64 KiB (ENOSPC chunking row), and the bytes
  in flight toward any one receiver stay <= 64 KiB (back-pressure row: blocking sends never
  wait, MSG_DONTWAIT never returns a partial count).
- push_data len <= 4096, or so large (>= 8 MiB after the u32 cut) that the allocation always
  fails (§6.5: between the two, GFP_ATOMIC allocations may fail at random).
- At most 6 push/pop steps in the whole program, and the last step list (which repeats for
  every later run, `Case.invocation`) pushes or pops only when every message gets exactly one
  run: no cork_bytes anywhere and every apply_bytes either 0 or larger than anything the case
  sends.  Otherwise a small apply re-runs the program on the rest of the message and a push in
  each run would grow the message for ever (a kernel loop, not a finding) or pass 17 ring
  elements (ring-full corners row).
- At most 64 program runs from apply_bytes windows: every nonzero apply_bytes a has
  (bytes sent + bytes pushed) / a <= 64.  Each run under a small apply hands TCP a tiny segment
  with MSG_MORE (§5.1); thousands of them exhaust the send buffer's memory accounting and the
  send blocks for good (measured: apply(1) with a push of 3692 bytes hung the worker), and runs
  past MAX_RUN_RECORDS (64) are not compared anyway.  The generator keeps small applies (the
  boundary 1 matters) by shrinking the sends, or raises the apply value.
- At most 24 sends per sending socket, and at most 16 KiB of them with MSG_MORE (MORE_SEND_MAX
  below: forced_push).  The ring-full corner this bound once avoided (a corked message's 17
  elements, spec §2.3) is modelled now: the ENOSPC return, the flush that follows, and K4
  (sim/page_frag.py sk_msg_memcopy_from_iter); the generator reaches it with many small sends.
- No sockopts: SO_SNDBUF / SO_RCVBUF change when back-pressure starts (back-pressure row).
- fresh_thread stays True, and sends name their sender thread or have one of their own: either
  way each thread's page frag starts empty with the case, and the model follows it (spec §2.1,
  §2.2; sim/page_frag.py).  One thing a named thread's layout can depend on is timing: once a
  receiver has read (or a close purged) TCP bytes from the thread's current page, the page is
  free only after the ACK and the skb's (possibly deferred) free.  `zone_layout` gives such a
  send a thread of its own instead (the model says which: notes["layout_doubt"]).
- Receives may sit between sends: the runner pushes pending TCP frames and lets loopback settle
  before every recv/fionread (docs/execution.md), which removes the recv-timing row.
With `deterministic=False` these limits are lifted (sizes up to the format's limits,
sockopts); use it only with a VM backend or to hunt crashes.

The rules are functions over steps and events; generate.py applies them while it builds a case
(naming each rule that changed something in `hits`), and `zone_violation` tells the minimizer and
the CLI which rule a case breaks.  docs/zone.md has every rule's measured cost and why it stays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sim
from diffuzz.contract.case import (
    SEND_TYPES,
    U32,
    ApplyBytes,
    Case,
    Close,
    CorkBytes,
    Event,
    Invocation,
    MapDelete,
    PopData,
    PushData,
    Recv,
    Send,
    SendFile,
    SendMsg,
    Shutdown,
    Splice,
    Step,
)
from diffuzz.engine.choice import Chooser

PUSH_DETERMINISTIC_MAX = 4096  # spec §6.5 / §10: larger pushes may fail with -ENOMEM at random
PUSH_ALWAYS_FAILS = 8 << 20  # above 4 MiB the page block allocation always fails (§6.5)
PUSHPOP_MAX = 6  # spec §10: push plus pop calls per message
APPLY_RUNS_MAX = 64  # runs an apply_bytes window may cause (module docstring); = outcome.MAX_RUN_RECORDS
SENDS_PER_SENDER_MAX = 24  # sends per sending socket (the ring fills at 17: modelled, spec §2.3)
MORE_BYTES_PER_SENDER = 16384  # MSG_MORE bytes per sender: below half the peer's window (forced_push)
# MSG_MORE / SPLICE_F_MORE only on sends of at most this many bytes.  tcp_sendmsg_locked pushes
# anyway once unpushed bytes pass half the peer's largest window (forced_push(), ~32 KiB on a
# fresh loopback pair): TCP window state, not sk_msg semantics.  8 such sends stay below it.
MORE_SEND_MAX = 2048


PUSHPOP_STEPS = (PushData, PopData)
Hits = set[str]  # the names of the zone rules that changed a case (the zone audit, docs/zone.md)


@dataclass(frozen=True)
class GenConfig:
    """Ranges the generator draws from (inclusive)."""

    pairs: tuple[int, int] = (1, 3)
    invocations: tuple[int, int] = (1, 4)
    steps: tuple[int, int] = (0, 4)  # per invocation
    sends: tuple[int, int] = (1, 8)
    send_len: tuple[int, int] = (1, 4000)
    big_send_p: float = 0.05  # a send of up to 33000 bytes: more than one 32 KiB page, two elements
    zero_send_p: float = 0.02  # a 0-byte send (returns 0, runs no program, spec §3.1)
    others: tuple[int, int] = (0, 5)  # non-send events between and after the sends
    deterministic: bool = True  # stay inside the spec §10 zone (module docstring)
    max_total_bytes: int = 40 * 1024
    many_sends: bool = True  # now and then 17-24 small sends (generate.py MANY_SENDS_P)
    layouts: bool = True  # sender thread layouts mixed (generate.py _LAYOUTS); else a thread per send
    # In a VM the kernel may die: the rules marked VM-only in docs/zone.md are lifted there
    # (`fuzz --kernel vm:NAME`), the rest of the zone stays.  splice_k1 always; pushpop_repeating in
    # a share of cases (VM_REPEATING_P): its cases wedge kernel and model alike (K5) and each costs a
    # VM its deadline and a boot; lifted in every case it took a 2-VM campaign from ~120 to 5 cases/s.
    vm: bool = False


DEFAULT = GenConfig()
VM_REPEATING_P = 0.05  # the share of a VM campaign's cases that keep push/pop in the repeating list
# The benchmarks' standard mix: 2 pairs, 1-4 steps per run, 5 sends of 1-4000 bytes.
STANDARD_MIX = GenConfig(pairs=(2, 2), steps=(1, 4), sends=(5, 5), send_len=(1, 4000), big_send_p=0.0,
                         zero_send_p=0.0, others=(0, 2), many_sends=False, layouts=False)


def zone_pushpop(lists: list[list[Step]], max_total_bytes: int, hits: Hits, repeating: bool = False) -> None:
    """Apply the push/pop rule of the deterministic zone (module docstring); `repeating` (a VM's
    share of cases, GenConfig.vm) keeps push/pop in the repeating list (K5's form) and only counts."""
    big = max_total_bytes + PUSHPOP_MAX * PUSH_DETERMINISTIC_MAX
    one_run_per_message = repeating or not any(
        isinstance(s, CorkBytes) or (isinstance(s, ApplyBytes) and 0 < s.bytes & U32 < big)
        for steps in lists
        for s in steps
    )
    if not one_run_per_message:
        kept = [s for s in lists[-1] if not isinstance(s, PUSHPOP_STEPS)]
        if len(kept) < len(lists[-1]):
            hits.add("pushpop_repeating")
        lists[-1][:] = kept
    seen = 0
    for steps in lists:
        kept = []
        for s in steps:
            if isinstance(s, PUSHPOP_STEPS):
                seen += 1
                if seen > PUSHPOP_MAX:
                    hits.add("pushpop_max")
                    continue
            kept.append(s)
        steps[:] = kept


def zone_runs(ch: Chooser, events: tuple[Event, ...], program: tuple[Invocation, ...], hits: Hits
              ) -> tuple[tuple[Event, ...], tuple[Invocation, ...]]:
    """Apply the apply_bytes run bound of the deterministic zone (module docstring)."""
    applies = [s.bytes & U32 for inv in program for s in inv.steps if isinstance(s, ApplyBytes)]
    a = min((x for x in applies if x), default=0)
    if not a:
        return events, program
    pushed = pushed_bytes(program)
    sent = sum(e.size for e in events if isinstance(e, SEND_TYPES))
    room = APPLY_RUNS_MAX * a
    if sent + pushed <= room:
        return events, program
    hits.add("apply_runs")
    if room > pushed and ch.draw_bool(0.5):
        # Keep the small apply; cut every send down in proportion (a send stays >= 1 byte).
        budget = room - pushed
        cut = tuple(resized(e, max(1, e.size * budget // sent)) if isinstance(e, SEND_TYPES) and e.size else e
                    for e in events)
        if sum(e.size for e in cut if isinstance(e, SEND_TYPES)) <= budget:
            return cut, program
    floor = -(-(sent + pushed) // APPLY_RUNS_MAX)
    return events, tuple(
        Invocation(tuple(ApplyBytes(floor) if isinstance(s, ApplyBytes) and 0 < s.bytes & U32 < floor else s
                         for s in inv.steps), inv.verdict)
        for inv in program)


def pushed_bytes(program: tuple[Invocation, ...]) -> int:
    """The most bytes the program's pushes can add (a push above 4 KiB fails in the zone)."""
    n = 0
    for inv in program:
        for s in inv.steps:
            if isinstance(s, PushData) and not s.flags and s.len & U32 <= PUSH_DETERMINISTIC_MAX:
                n += s.len & U32
    return n


def resized(e: Event, n: int) -> Event:
    if isinstance(e, SendMsg):
        iov = list(e.iov)
        total = 0
        for i, x in enumerate(iov):
            iov[i] = min(x, n - total)
            total += iov[i]
        return replace(e, iov=tuple(iov))
    return replace(e, len=n)


def zone_more(flags: tuple[str, ...], n: int, more: str, hits: Hits) -> tuple[str, ...]:
    """Drop the MORE flag from a send larger than MORE_SEND_MAX (the zone keeps it small)."""
    if n > MORE_SEND_MAX and more in flags:
        hits.add("more_size")
        return tuple(f for f in flags if f != more)
    return flags


def splice_unsafe(program: tuple[Invocation, ...]) -> bool:
    """Programs that can make tcp_bpf_sendmsg return more than it was given: push_data or
    pop_data with apply_bytes or cork_bytes (K1: copied -= tosend + delta, spec §4.3), and
    apply_bytes with cork_bytes (K4: a coalescing send's copy counts what was reserved where the
    kernel lacks memcopy_returns_copied).  splice_to_socket trusts the count and releases pipe
    buffers it does not have: K1 once hung this host, and K4 this way panicked Debian's 6.12.118
    in a VM (corpus/vm-only/, docs/kernel-notes.md K4).  Such programs are never combined with
    splice or sendfile on the host, whatever its kernel; that belongs in a VM (GenConfig.vm)."""
    steps = [s for inv in program for s in inv.steps]
    sizing = {type(s) for s in steps} & {ApplyBytes, CorkBytes}
    return bool(sizing) and (any(isinstance(s, PushData | PopData) for s in steps) or len(sizing) == 2)


def zone_splice(events: tuple[Event, ...], program: tuple[Invocation, ...], hits: Hits) -> tuple[Event, ...]:
    """Turn splice/sendfile into send (same bytes) when the program is splice_unsafe."""
    if not splice_unsafe(program) or not any(isinstance(e, SendFile | Splice) for e in events):
        return events
    hits.add("splice_k1")
    return tuple(Send(e.ep, e.len, thread=e.thread) if isinstance(e, SendFile | Splice) else e for e in events)


# Events after which a thread's page may be freed by timing: a read, a close, a psock torn down,
# and a shutdown (data then meets a socket that answers with a reset, which purges queues).
_LET_GO = (Recv, Close, MapDelete, Shutdown)


def _may_let_go(case: Case) -> bool:
    """A recv, close, map delete or shutdown comes before the last send of some named thread:
    only then can a named thread's page be held by loose references (sim/page_frag.py; a
    shutdown or close acts later too, through the reset a later send provokes).  A cheap test
    that spares most cases the model run of `layout_doubt`."""
    last = max((i for i, e in enumerate(case.events) if getattr(e, "thread", None) is not None), default=-1)
    return any(isinstance(e, _LET_GO) for e in case.events[:last])


def layout_doubt(case: Case) -> int | None:
    """The first send whose page-frag layout the case does not fix (module docstring), or
    None.  The reference profile decides: the profiles differ in where bytes go, not in how a
    page is freed."""
    if not case.shared_threads or not _may_let_go(case):
        return None
    doubt = sim.run(case).notes.get("layout_doubt")
    return doubt if isinstance(doubt, int) else None


def zone_layout(case: Case, hits: Hits) -> Case:
    """Give each send whose layout is in doubt a thread of its own, until none is."""
    for _ in range(len(case.events)):
        i = layout_doubt(case)
        if i is None:
            break
        hits.add("layout_doubt")
        events = list(case.events)
        events[i] = replace(events[i], thread=None)  # type: ignore[call-arg]
        case = replace(case, events=tuple(events))
    return case


def zone_violation(case: Case, config: GenConfig = DEFAULT) -> str | None:
    """Which rule of the deterministic zone (module docstring) the case breaks, or None.

    The generator never breaks one; the minimizer uses this to stay inside the zone, because
    deleting a step list or shrinking a number can leave it (a push in the repeating last
    step list, an apply of 1 over thousands of bytes: kernel hangs, not findings)."""
    if case.sockopts:
        return "sockopts"
    if not case.fresh_thread:
        return "fresh_thread is off"
    sends = [e for e in case.events if isinstance(e, SEND_TYPES)]
    sent = sum(e.size for e in sends)
    if sent > config.max_total_bytes:
        return f"{sent} bytes sent, more than {config.max_total_bytes}"
    for ep in case.endpoints():
        if sum(1 for e in sends if e.ep == ep) > SENDS_PER_SENDER_MAX:
            return f"more than {SENDS_PER_SENDER_MAX} sends from {ep}"
        more = sum(e.size for e in sends if e.ep == ep and {"MSG_MORE", "SPLICE_F_MORE"} & set(getattr(e, "flags", ())))
        if more > MORE_BYTES_PER_SENDER:
            return f"{more} bytes with MORE from {ep}, more than {MORE_BYTES_PER_SENDER} (forced_push)"
    steps = [s for inv in case.program for s in inv.steps]
    if sum(isinstance(s, PUSHPOP_STEPS) for s in steps) > PUSHPOP_MAX:
        return f"more than {PUSHPOP_MAX} push/pop steps"
    for s in steps:
        if isinstance(s, PushData) and PUSH_DETERMINISTIC_MAX < s.len & U32 < PUSH_ALWAYS_FAILS:
            return f"push_data len {s.len & U32} may or may not be allocated"
    big = config.max_total_bytes + PUSHPOP_MAX * PUSH_DETERMINISTIC_MAX
    if not config.vm and any(isinstance(s, PUSHPOP_STEPS) for s in case.program[-1].steps) and any(
            isinstance(s, CorkBytes) or (isinstance(s, ApplyBytes) and 0 < s.bytes & U32 < big) for s in steps):
        return "push/pop in the repeating last step list with a cork or a small apply"
    for e in sends:
        if e.size > MORE_SEND_MAX and {"MSG_MORE", "SPLICE_F_MORE"} & set(getattr(e, "flags", ())):
            return f"a {e.size}-byte send with MORE: more than {MORE_SEND_MAX} (forced_push)"
    if not config.vm and splice_unsafe(case.program) and any(isinstance(e, SendFile | Splice) for e in sends):
        return "splice/sendfile with a program that can make a send return more than it took (K1, K4: VM only)"
    a = min((s.bytes & U32 for s in steps if isinstance(s, ApplyBytes) and s.bytes & U32), default=0)
    if a and sent + pushed_bytes(case.program) > APPLY_RUNS_MAX * a:
        return f"apply_bytes {a} over {sent + pushed_bytes(case.program)} bytes: more than {APPLY_RUNS_MAX} runs"
    doubt = layout_doubt(case)
    if doubt is not None:
        return (f"events[{doubt}]: its thread's page may or may not be free by then (TCP frees read bytes on "
                "the ACK and a deferred skb free): the layout is timing")
    return None


