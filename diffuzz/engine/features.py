"""A cheap feature signal: which helper/state combinations a case reached.

Coverage-guided engines (atheris, the random engine's corpus keeper) need to know when a case
did something new.  Instrumenting the model would make it slower than the kernel (design.md,
"Engines"), so instead the signal is read off the Case and the model's Outcome after the run:
each feature is a short string naming a situation the spec cares about, hashed to a stable
32-bit int (crc32, so the same case gives the same ints in every process; `hash()` is salted).

Features (the name prefixes, so a reader can decode a coverage report):

- ``h:<pos>:<j>:<op>:<class>``  helper at run position (0, 1, 2, 3 = later) and step j, and its return class
                              (ok, EINVAL, ENOMEM, skip for a write outside the window,
                              pass/miss for a redirect hit or lookup miss).
- ``v:<seq>``                 the first verdicts of the case, run-length folded (P, D, X other).
- ``rc:<bucket>``             run count, log2 bucket.
- ``sz:<class>``              a run that grew, shrank, emptied or kept msg->size.
- ``popall_redir``            everything popped (size_out 0) and then redirected.
- ``redir:<self|peer|other|unmapped>[:in]``  a successful redirect's target relative to the sender,
                              looked up in the case's initial inserts.
- ``norun:<why>``             a send that moved bytes without a run of its own: an apply window
                              spanning a send boundary, cork accumulation, a sticky DROP (spec §4.5).
- ``cork_flush``, ``cork_drop`` a run that saw more bytes than its send (corked bytes flushed),
                              and such a run returning DROP.
- ``send:<op>:<class>``       send return class: full, partial, zero or the errno name.
- ``epipe_redir``             EPIPE on a send whose run redirected (spec §5.3).
- ``ev:<op>:<in map>:<attached>:<class>``  each event kind against the state it met.
- ``ingress_tcp:<order>``     one receiver got both ingress-redirected and TCP data; ``late``
                              when the ingress data came after TCP data (read first anyway, §7).
- ``fionread``, ``eof``, ``unknown``, ``sigpipe``, ``hang``, ``end:<how>``.
- ``layout:<own|one|shared>`` the sender threads: a thread per send, one named thread, several (Case.sender_layout).
- ``win:coalesced``, ``win:split``  a flush whose first element holds bytes of two sends (a shared
                              frag), and a run whose message starts near a page's end.
- ``bug:<K>``                 the model copied documented kernel bug K (its notes).

Cost: 9 us for a small case, about 22 us for a 10-event, 8-run case on the 2-core dev machine
(docs/long-runs.md).  Keep it so: no per-byte work, one pass over runs and one over events.
"""

from __future__ import annotations

import zlib

from diffuzz.contract.case import (
    SEND_TYPES,
    Attach,
    Case,
    Close,
    Detach,
    Invocation,
    MapDelete,
    MapInsert,
    peer_of,
)
from diffuzz.contract.outcome import MAX_RUN_RECORDS, Outcome, Ret
from sim.page_frag import PAGE_FRAG_SIZE

# Stable ids for feature names; the same few hundred names recur, so memoise the crc32.
_IDS: dict[str, int] = {}

_HELPER_RC = {0: "ok", -22: "EINVAL", -12: "ENOMEM", -1: "skip", -7: "E2BIG", -28: "ENOSPC"}
_VERDICT = {1: "P", 0: "D"}


def feature_id(name: str) -> int:
    """The stable int for a feature name (crc32 of its UTF-8 bytes)."""
    fid = _IDS.get(name)
    if fid is None:
        fid = _IDS[name] = zlib.crc32(name.encode())
    return fid


def _bucket(n: int) -> int:
    """0, 1, 2, 3 exactly; then the power of two at or below n (4, 8, 16 ...)."""
    return n if n < 4 else 1 << (n.bit_length() - 1)


def _ret_class(ret: Ret | None, size: int) -> str:
    if ret is None:
        return "none"
    if isinstance(ret, str):
        return ret
    if ret == size:
        return "full"
    return "zero" if ret == 0 else "partial"


# Step feature names by (position, step index, op, rc): a few hundred in practice; the cap only
# guards against a generator that feeds many distinct odd return codes.
_STEP_NAMES: dict[tuple[int, int, str, int], str] = {}


def _step_name(pos: int, j: int, op: str, rc: int) -> str:
    key = (pos, j, op, rc)
    name = _STEP_NAMES.get(key)
    if name is None:
        if op == "redirect":
            cls = "pass" if rc == 1 else "miss" if rc == 0 else str(rc)
        else:
            cls = _HELPER_RC.get(rc, "other")
        if len(_STEP_NAMES) > 65536:
            _STEP_NAMES.clear()
        name = _STEP_NAMES[key] = f"h:{pos}:{j}:{op}:{cls}"
    return name


class _Program:
    """Per-invocation facts, built once per step list of a case (most runs share one)."""

    __slots__ = ("inv", "ops", "redirects")

    def __init__(self, inv: Invocation) -> None:
        self.inv = inv
        self.ops = [step.op for step in inv.steps]
        self.redirects = [j for j, op in enumerate(self.ops) if op == "redirect"]

    def has(self, op: str) -> bool:
        return op in self.ops


def feature_names(case: Case, outcome: Outcome) -> set[str]:
    """The features as readable names (for reports and tests); `features` hashes them."""
    out: set[str] = set()
    add = out.add
    if outcome.hang:
        add("hang")
        return out

    key_ep = {e.key: e.ep for e in case.inserts}
    peer = {ep: peer_of(ep) for ep in case.endpoints()}
    runs = outcome.runs
    add(f"rc:{_bucket(outcome.run_count)}")
    if outcome.run_count > MAX_RUN_RECORDS:
        add("rc:overflow")

    # ---- runs: helpers, verdicts, sizes, redirect targets -----------------------------
    program = case.program
    last = len(program) - 1
    tables: dict[int, _Program] = {}
    run_prog: list[_Program] = []
    run_target: list[tuple[str | None, bool] | None] = []  # where a run's bytes went on a redirect
    verdicts: list[str] = []
    runs_by_task: dict[int, list[int]] = {}
    for i, run in enumerate(runs):
        k = i if i < last else last
        pos = i if i < 3 else 3
        prog = tables.get(k)
        if prog is None:
            prog = tables[k] = _Program(program[k])
        run_prog.append(prog)
        steps = run.steps
        ops = prog.ops
        for j in range(min(len(steps), len(ops))):
            add(_step_name(pos, j, ops[j], steps[j].rc))
        target: tuple[str | None, bool] | None = None
        for j in prog.redirects:
            if j < len(steps) and steps[j].rc == 1:
                step = prog.inv.steps[j]
                target = (key_ep.get(step.key), bool(step.flags & 1))
        verdict = run.verdict
        verdicts.append(_VERDICT.get(verdict, "X"))
        if target is not None:
            to = target[0]
            where = "self" if to == run.ep else "peer" if to == peer[run.ep] else "other" if to else "unmapped"
            add(f"redir:{where}:in" if target[1] else f"redir:{where}")
        run_target.append(target)
        size_in, size_out = run.size_in, run.size_out
        if size_out == 0 and size_in:
            add("sz:empty")
            if target is not None and verdict == 1:
                add("popall_redir")
        elif size_out > size_in:
            add("sz:grew")
        elif size_out < size_in:
            add("sz:shrank")
        task = run.ctx.task
        if task.__class__ is int:
            runs_by_task.setdefault(task, []).append(i)

    # Runs name the event that issued them only when each send has its own thread.
    attributable = len(runs_by_task) > 0 or not runs
    if verdicts:
        folded = [verdicts[0]]
        for v in verdicts[1:8]:
            if v != folded[-1]:
                folded.append(v)
        add("v:" + "".join(folded[:4]))

    # ---- events against the map/attach state they met ---------------------------------
    in_map = set(key_ep.values())
    member = dict(key_ep)
    add(f"layout:{case.sender_layout()}")
    for bug in outcome.notes.get("kernel_bugs", ()):
        add(f"bug:{bug}")
    attached = True
    last_run: dict[str, int] = {}  # ep -> index of its latest run so far
    tcp_at: dict[str, int] = {}  # receiver -> event index of the first TCP data to it
    ingress_at: dict[str, int] = {}  # receiver -> event index of the first ingress redirect to it
    for idx, (ev, res) in enumerate(zip(case.events, outcome.events, strict=False)):
        ret = res.ret
        if res.sigpipe:
            add("sigpipe")
        op = ev.op
        ep = getattr(ev, "ep", "")
        if isinstance(ev, SEND_TYPES):
            size = ev.size
            cls = _ret_class(ret, size)
            add(f"send:{op}:{cls}")
            own = runs_by_task.get(idx)
            if own:
                redirected = False
                for ri in own:
                    run = runs[ri]
                    target = run_target[ri]
                    if run.verdict != 1:
                        if run.size_in > size:
                            add("cork_drop")  # corked bytes of earlier sends meet a DROP (spec §3.1)
                    elif target is None:
                        tcp_at.setdefault(peer[ep], idx)
                    else:
                        redirected = True
                        if target[0] is not None:
                            if target[1]:
                                ingress_at.setdefault(target[0], idx)
                            else:
                                tcp_at.setdefault(peer[target[0]], idx)
                    if run.size_in > size:
                        add("cork_flush")
                        if run.win_in is not None and run.win_in > size:
                            add("win:coalesced")  # the corked bytes share an element with this send's
                    elif run.win_in is not None and run.win_in < run.size_in <= PAGE_FRAG_SIZE:
                        add("win:split")  # the frag was part-used: the message starts near a page end
                last_run[ep] = own[-1]
                if redirected and ret == "EPIPE":
                    add("epipe_redir")
            elif ep in in_map:
                if attributable and ((ret.__class__ is int and ret > 0) or ret == "EACCES"):
                    prev_i = last_run.get(ep)
                    if prev_i is None:
                        add("norun:first")
                    elif runs[prev_i].verdict != 1:
                        add("norun:sticky_drop")  # spec §4.5
                    elif run_prog[prev_i].has("cork_bytes"):
                        add("norun:cork")
                    elif run_prog[prev_i].has("apply_bytes"):
                        add("norun:apply_span")
                    else:
                        add("norun:pass")
            elif ret.__class__ is int and ret > 0:
                tcp_at.setdefault(peer[ep], idx)
        elif ret.__class__ is str:
            cls = ret
        elif ret is None:
            cls = "none"
        else:
            cls = "pos" if ret > 0 else "zero" if ret == 0 else "neg"
        add(f"ev:{op}:{int(ep in in_map)}:{int(attached)}:{cls}")
        if op == "recv":
            if ret == 0 and ev.len:
                add("eof")
            if res.data is not None and res.data.unknown:
                add("unknown")
            if ret.__class__ is int and ret > 0 and ep in ingress_at and ep in tcp_at:
                add("ingress_tcp:late" if tcp_at[ep] < ingress_at[ep] else "ingress_tcp:early")
        elif op == "fionread":
            if ret.__class__ is int and ret > 0:
                add("fionread")
        elif isinstance(ev, MapInsert):
            if ret == 0:
                member[ev.key] = ev.ep
                in_map.add(ev.ep)
        elif isinstance(ev, MapDelete):
            gone = member.pop(ev.key, None)
            if gone is not None and gone not in member.values():
                in_map.discard(gone)
        elif isinstance(ev, Close):
            in_map.discard(ev.ep)
        elif isinstance(ev, Detach):
            attached = False
        elif isinstance(ev, Attach):
            attached = True

    # ---- the end of the case ----------------------------------------------------------
    for name, end in outcome.endpoints.items():
        add(f"end:{end.end}")
        if end.end == "EOF":
            add("eof")
        if end.fionread:
            add("fionread")
        if end.rx.unknown:
            add("unknown")
        # Both kinds of data reached this receiver: the kernel reads ingress_msg first (spec §7).
        if name in ingress_at and name in tcp_at and len(end.rx):
            add("ingress_tcp:late" if tcp_at[name] < ingress_at[name] else "ingress_tcp:early")
    return out


def features(case: Case, model_outcome: Outcome) -> frozenset[int]:
    """The feature set of one case, as stable ints; pass the model's Outcome.

    Deterministic across processes and Python runs.  Cost: about 10-25 us.
    """
    ids = _IDS
    return frozenset([ids.get(n) or feature_id(n) for n in feature_names(case, model_outcome)])
