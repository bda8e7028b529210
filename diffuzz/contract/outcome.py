"""The Outcome: what one side (kernel or model) observed for a Case.

Both sides fill the same shape.  Values that one side cannot pin down are expressed in
the data, never by skipping the field: a byte the kernel leaves undefined is a wildcard in
`Data`, a window that depends on page-frag layout is None.  compare.py decides, in one
table, how each such value is treated.

This module is a leaf: it imports nothing from the project.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
RUN_HEAD = 16  # bytes of each run's window recorded (Run.head)

# A syscall result: the non-negative return value, or the errno name ("EACCES").
Ret = int | str

ERRNO_NAMES: Mapping[int, str] = {
    1: "EPERM", 2: "ENOENT", 4: "EINTR", 7: "E2BIG", 8: "ENOEXEC", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM",
    13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 22: "EINVAL", 28: "ENOSPC", 32: "EPIPE",
    95: "EOPNOTSUPP", 104: "ECONNRESET", 107: "ENOTCONN", 110: "ETIMEDOUT",
}


def errno_ret(errno: int) -> str:
    """The Ret for a failed syscall with this (positive) errno."""
    return ERRNO_NAMES.get(errno, f"E{errno}")


@dataclass(frozen=True)
class Data:
    """Bytes with holes: `unknown` lists [start, end) ranges whose bytes are undefined.

    JSON form: hex, two digits a byte, "??" for an unknown byte.
    """

    raw: bytes = b""
    unknown: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        # One canonical form, so equal contents compare equal and survive JSON: ranges
        # clipped, sorted and merged, and the bytes under them zeroed.
        if not self.unknown:
            return
        merged: list[tuple[int, int]] = []
        for start, end in sorted(self.unknown):
            start, end = max(0, start), min(len(self.raw), end)
            if start >= end:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        raw = bytearray(self.raw)
        for start, end in merged:
            raw[start:end] = bytes(end - start)
        object.__setattr__(self, "raw", bytes(raw))
        object.__setattr__(self, "unknown", tuple(merged))

    def __len__(self) -> int:
        return len(self.raw)

    def known_mask(self) -> bytearray:
        mask = bytearray(b"\x01") * len(self.raw)
        for start, end in self.unknown:
            mask[start:end] = bytes(end - start)
        return mask

    def matches(self, concrete: bytes) -> bool:
        """True when `concrete` has the same length and agrees on every known byte."""
        if len(concrete) != len(self.raw):
            return False
        if not self.unknown:
            return concrete == self.raw
        pos = 0
        for start, end in self.unknown:
            if concrete[pos:start] != self.raw[pos:start]:
                return False
            pos = end
        return concrete[pos:] == self.raw[pos:]

    def to_json(self) -> str:
        text = self.raw.hex()
        for start, end in self.unknown:
            text = text[: 2 * start] + "??" * (end - start) + text[2 * end :]
        return text

    @classmethod
    def from_json(cls, text: str) -> Data:
        if "?" not in text:
            return cls(bytes.fromhex(text))
        unknown: list[tuple[int, int]] = []
        raw = bytearray()
        for i in range(0, len(text), 2):
            pair = text[i : i + 2]
            if pair == "??":
                n = i // 2
                if unknown and unknown[-1][1] == n:
                    unknown[-1] = (unknown[-1][0], n + 1)
                else:
                    unknown.append((n, n + 1))
                raw.append(0)
            else:
                raw += bytes.fromhex(pair)
        return cls(bytes(raw), tuple(unknown))


@dataclass(frozen=True)
class EventResult:
    """One event's result.  `ret` is None for events that return nothing (close, detach)."""

    ret: Ret | None = None
    sigpipe: bool = False
    data: Data | None = None  # bytes a recv returned


@dataclass(frozen=True)
class StepRecord:
    """One helper step as the program saw it: the helper's return value (s64), and
    data_end - data after the step (None where the layout is not pinned)."""

    rc: int
    win: int | None


@dataclass(frozen=True)
class RunContext:
    """The struct sk_msg_md fields, reported as the endpoints they belong to.

    local/remote name the endpoint whose address and port they hold, read with the UAPI's
    byte order (local_port host order, remote_port network order); a value that matches no
    endpoint is reported raw as "?<ip>:<port>".  task is the index of the event whose
    thread ran the program, or "?<tid>" if it was another thread.
    """

    family: int
    local: str
    remote: str
    task: int | str


@dataclass(frozen=True)
class Run:
    """One run of the SK_MSG program."""

    ep: str  # the socket whose send ran it
    size_in: int  # msg->size on entry
    win_in: int | None  # data_end - data on entry (None where not pinned)
    steps: tuple[StepRecord, ...]
    size_out: int  # msg->size on exit
    verdict: int  # the u32 the program returned
    ctx: RunContext
    # The first RUN_HEAD bytes of the window [data, data_end) on entry: what the program reads
    # (None where the window is not pinned, or from a runner that does not record it).
    head: Data | None = None


@dataclass(frozen=True)
class Endpoint:
    """A socket at the end of the case.

    fionread: ioctl(FIONREAD) before draining (None when closed).
    rx: every byte read while draining, in order.
    end: how draining ended: "EAGAIN", "EOF", an errno name, or "closed" (closed by the
    case; not drained).
    """

    rx: Data = field(default_factory=Data)
    fionread: int | None = None
    end: str = "EAGAIN"


@dataclass(frozen=True)
class Outcome:
    side: str  # "kernel" or "model"
    inserts: tuple[Ret, ...] = ()  # result of each initial insert, in order
    events: tuple[EventResult, ...] = ()
    runs: tuple[Run, ...] = ()  # the first MAX_RUN_RECORDS runs
    run_count: int = 0  # every run, recorded or not
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    hang: bool = False  # the kernel side did not finish within its deadline
    # Side-specific facts that are never compared (kernel release, timings, backend).
    notes: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return outcome_to_dict(self)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(outcome_to_dict(self), indent=indent)


MAX_RUN_RECORDS = 64


# --------------------------------------------------------------------------------------
# JSON


def outcome_to_dict(o: Outcome) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "side": o.side,
        "inserts": list(o.inserts),
        "events": [_event_to_dict(e) for e in o.events],
        "runs": [_run_to_dict(r) for r in o.runs],
        "run_count": o.run_count,
        "endpoints": {
            name: {"rx": ep.rx.to_json(), "fionread": ep.fionread, "end": ep.end}
            for name, ep in o.endpoints.items()
        },
        "hang": o.hang,
        "notes": dict(o.notes),
    }


def _event_to_dict(e: EventResult) -> dict[str, Any]:
    out: dict[str, Any] = {"ret": e.ret}
    if e.sigpipe:
        out["sigpipe"] = True
    if e.data is not None:
        out["data"] = e.data.to_json()
    return out


def _run_to_dict(r: Run) -> dict[str, Any]:
    return {
        "ep": r.ep,
        "size_in": r.size_in,
        "win_in": r.win_in,
        "steps": [{"rc": s.rc, "win": s.win} for s in r.steps],
        "size_out": r.size_out,
        "verdict": r.verdict,
        "ctx": {"family": r.ctx.family, "local": r.ctx.local, "remote": r.ctx.remote, "task": r.ctx.task},
        **({"head": r.head.to_json()} if r.head is not None else {}),
    }


def outcome_from_dict(obj: Mapping[str, Any]) -> Outcome:
    """Inverse of outcome_to_dict.  Outcomes are written by diffuzz itself, so a malformed
    one is a bug or a damaged file: it raises ValueError naming the file's problem."""
    try:
        version = obj["format"]
        if version != FORMAT_VERSION:
            raise ValueError(f"outcome format {version} is not {FORMAT_VERSION}")
        return Outcome(
            side=obj["side"],
            inserts=tuple(obj["inserts"]),
            events=tuple(
                EventResult(
                    ret=e["ret"],
                    sigpipe=e.get("sigpipe", False),
                    data=Data.from_json(e["data"]) if "data" in e else None,
                )
                for e in obj["events"]
            ),
            runs=tuple(
                Run(
                    ep=r["ep"],
                    size_in=r["size_in"],
                    win_in=r["win_in"],
                    steps=tuple(StepRecord(rc=s["rc"], win=s["win"]) for s in r["steps"]),
                    size_out=r["size_out"],
                    verdict=r["verdict"],
                    ctx=RunContext(**r["ctx"]),
                    head=Data.from_json(r["head"]) if "head" in r else None,
                )
                for r in obj["runs"]
            ),
            run_count=obj["run_count"],
            endpoints={
                name: Endpoint(rx=Data.from_json(ep["rx"]), fionread=ep["fionread"], end=ep["end"])
                for name, ep in obj["endpoints"].items()
            },
            hang=obj.get("hang", False),
            notes=obj.get("notes", {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed outcome: {e!r}") from None


def loads_outcome(text: str) -> Outcome:
    return outcome_from_dict(json.loads(text))
