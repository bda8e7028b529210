"""The Case: one differential test, as pure data.

A Case describes sockets, a sockmap or sockhash, the SK_MSG program (as one step list per
invocation) and a sequence of events (sends and everything in between).  Both the kernel
runner and the model take a Case and return an Outcome; neither may interpret a field
differently, so every rule that both sides need (payload bytes, which step list an
invocation runs, flag values) lives here.

This module is a leaf: it imports nothing from the project.  The JSON form is documented
in docs/case-format.md.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

FORMAT_VERSION = 1

U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF

# Limits that keep a case runnable in bounded time and memory.  They bound the case, not
# the helper arguments: those are raw u32/u64 on purpose (bad values are the point).
MAX_PAIRS = 8
MAX_MAP_SIZE = 1024
MAX_PROGRAMS = 32
MAX_STEPS = 16
MAX_WRITE = 16
# A write step stores only at offsets up to this: the verifier grants direct packet access up to
# data + MAX_PACKET_OFF (0xffff), and a program taking the offset at run time must leave room
# for the longest store.  Past it the step is skipped (rc -1) on every backend and in the model.
WRITE_MAX_OFFSET = 0xFFFF - MAX_WRITE
MAX_EVENTS = 256
MAX_SEND = 1 << 20
MAX_IOV = 64
MAX_SPLICE = 1 << 16  # one user pipe of 16 page buffers holds at most this much
MAX_RECV = 1 << 20

FAMILIES = ("ipv4", "ipv6")
MAP_TYPES = ("sockmap", "sockhash")
PATTERNS = ("alphabet", "random")

# Send flags a case may use, with their Linux values.  MSG_OOB, MSG_ZEROCOPY and
# MSG_FASTOPEN are left out on purpose (spec §5.1: they change TCP, not sk_msg).
SEND_FLAGS: Mapping[str, int] = {
    "MSG_DONTWAIT": 0x40,
    "MSG_EOR": 0x80,
    "MSG_NOSIGNAL": 0x4000,
    "MSG_MORE": 0x8000,
}
SPLICE_FLAGS: Mapping[str, int] = {"SPLICE_F_NONBLOCK": 0x02, "SPLICE_F_MORE": 0x04}
SHUT_HOW: Mapping[str, int] = {"SHUT_RD": 0, "SHUT_WR": 1, "SHUT_RDWR": 2}

SK_DROP = 0
SK_PASS = 1
BPF_F_INGRESS = 1

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class CaseError(ValueError):
    """A case that does not fit the format; the message names the offending field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


# --------------------------------------------------------------------------------------
# Program steps: one dataclass per helper call or action, tagged by `op` in JSON.


@dataclass(frozen=True)
class ApplyBytes:
    """bpf_msg_apply_bytes(msg, bytes); the register is u64, the kernel keeps u32."""

    bytes: int
    op = "apply_bytes"


@dataclass(frozen=True)
class CorkBytes:
    """bpf_msg_cork_bytes(msg, bytes)."""

    bytes: int
    op = "cork_bytes"


@dataclass(frozen=True)
class PullData:
    """bpf_msg_pull_data(msg, start, end, flags)."""

    start: int
    end: int
    flags: int = 0
    op = "pull_data"


@dataclass(frozen=True)
class PushData:
    """bpf_msg_push_data(msg, start, len, flags)."""

    start: int
    len: int
    flags: int = 0
    op = "push_data"


@dataclass(frozen=True)
class PopData:
    """bpf_msg_pop_data(msg, start, len, flags)."""

    start: int
    len: int
    flags: int = 0
    op = "pop_data"


@dataclass(frozen=True)
class Write:
    """Store `data` at `offset` in the direct-access window [data, data_end).

    The program bounds-checks the whole store against data_end (the verifier insists);
    a store that does not fit is skipped and recorded with rc -1, nothing written.
    """

    offset: int
    data: bytes
    op = "write"


@dataclass(frozen=True)
class Redirect:
    """bpf_msg_redirect_map / bpf_msg_redirect_hash into the case's map.

    Which helper is used follows the map type: a sockmap takes the u32 key directly, a
    sockhash takes a pointer to the same u32 key.
    """

    key: int
    flags: int = 0
    op = "redirect"


Step = ApplyBytes | CorkBytes | PullData | PushData | PopData | Write | Redirect
STEP_TYPES: Mapping[str, type] = {
    t.op: t for t in (ApplyBytes, CorkBytes, PullData, PushData, PopData, Write, Redirect)
}

# The program's return value: SK_PASS (1), SK_DROP (0), any other u32, or LAST_RC, the
# return value of the last helper step (the common `return bpf_msg_redirect_map(...)`).
LAST_RC = "last_rc"
Verdict = int | str


@dataclass(frozen=True)
class Invocation:
    """What the program does on one run: helper steps in order, then a return value."""

    steps: tuple[Step, ...] = ()
    verdict: Verdict = SK_PASS


# --------------------------------------------------------------------------------------
# Events: sends and everything that may happen between them, tagged by `op` in JSON.


@dataclass(frozen=True)
class Send:
    """send(ep, payload, flags): one iovec."""

    ep: str
    len: int
    flags: tuple[str, ...] = ()
    op = "send"

    @property
    def size(self) -> int:
        return self.len


@dataclass(frozen=True)
class SendMsg:
    """sendmsg(ep, iovecs of the given lengths, flags)."""

    ep: str
    iov: tuple[int, ...]
    flags: tuple[str, ...] = ()
    op = "sendmsg"

    @property
    def size(self) -> int:
        return sum(self.iov)


@dataclass(frozen=True)
class SendFile:
    """sendfile(ep, file, offset 0, len) from a fresh file holding the payload."""

    ep: str
    len: int
    op = "sendfile"

    @property
    def size(self) -> int:
        return self.len


@dataclass(frozen=True)
class Splice:
    """write(pipe, payload) then splice(pipe -> ep, len, flags) from a fresh pipe."""

    ep: str
    len: int
    flags: tuple[str, ...] = ()
    op = "splice"

    @property
    def size(self) -> int:
        return self.len


@dataclass(frozen=True)
class Recv:
    """recv(ep, len, MSG_DONTWAIT [| MSG_PEEK]); never blocks."""

    ep: str
    len: int
    peek: bool = False
    op = "recv"


@dataclass(frozen=True)
class Fionread:
    """ioctl(ep, FIONREAD)."""

    ep: str
    op = "fionread"


@dataclass(frozen=True)
class Close:
    """close(ep); with rst the socket is closed with SO_LINGER 0 (an RST to the peer)."""

    ep: str
    rst: bool = False
    op = "close"


@dataclass(frozen=True)
class Shutdown:
    """shutdown(ep, how)."""

    ep: str
    how: str = "SHUT_WR"
    op = "shutdown"


@dataclass(frozen=True)
class MapDelete:
    """bpf_map_delete_elem(map, key) from user space."""

    key: int
    op = "map_delete"


@dataclass(frozen=True)
class MapInsert:
    """bpf_map_update_elem(map, key, ep's fd, flags) from user space."""

    key: int
    ep: str
    flags: int = 0
    op = "map_insert"


@dataclass(frozen=True)
class Detach:
    """BPF_PROG_DETACH of the verdict program from the map."""

    op = "detach"


@dataclass(frozen=True)
class Attach:
    """BPF_PROG_ATTACH of the verdict program to the map (again)."""

    op = "attach"


SendEvent = Send | SendMsg | SendFile | Splice
Event = (
    Send | SendMsg | SendFile | Splice | Recv | Fionread | Close | Shutdown | MapDelete | MapInsert | Detach | Attach
)
EVENT_TYPES: Mapping[str, type] = {
    t.op: t
    for t in (Send, SendMsg, SendFile, Splice, Recv, Fionread, Close, Shutdown, MapDelete, MapInsert, Detach, Attach)
}
SEND_TYPES = (Send, SendMsg, SendFile, Splice)


# --------------------------------------------------------------------------------------
# Topology and the case itself.


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

    def invocation(self, run_index: int) -> Invocation:
        """Run i (counted over the whole case) runs step list min(i, last)."""
        return self.program[min(run_index, len(self.program) - 1)]

    def payload_for(self, event_index: int) -> bytes:
        """The bytes that event `event_index` (a send of any kind) sends."""
        event = self.events[event_index]
        if not isinstance(event, SEND_TYPES):
            raise CaseError(f"events[{event_index}]", "not a send")
        if self.payload.pattern == "random":
            return random.Random(f"{self.payload.seed}:{event_index}").randbytes(event.size)
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


# --------------------------------------------------------------------------------------
# JSON: load, with validation that names the offending field.

T = TypeVar("T")


class _Reader:
    """Reads one JSON object, checking types and ranges and naming the field on error."""

    def __init__(self, obj: Any, path: str) -> None:
        if not isinstance(obj, dict):
            raise CaseError(path, f"must be an object, not {_kind(obj)}")
        self.obj = obj
        self.path = path
        self.used: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, conv: Callable[[Any, str], T], default: Any = ...) -> T:
        self.used.add(key)
        if key not in self.obj:
            if default is ...:
                raise CaseError(self.sub(key), "missing")
            return default
        return conv(self.obj[key], self.sub(key))

    def done(self) -> None:
        unknown = sorted(set(self.obj) - self.used)
        if unknown:
            raise CaseError(self.sub(unknown[0]), "unknown field")


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _int_in(lo: int, hi: int) -> Callable[[Any, str], int]:
    def conv(value: Any, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise CaseError(path, f"must be an integer, not {_kind(value)}")
        if not lo <= value <= hi:
            raise CaseError(path, f"must be in {lo}..{hi}, got {value}")
        return value

    return conv


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise CaseError(path, f"must be true or false, not {_kind(value)}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise CaseError(path, f"must be a string, not {_kind(value)}")
    return value


def _choice(options: Mapping[str, Any] | tuple[str, ...]) -> Callable[[Any, str], str]:
    def conv(value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in options:  # a list or object is unhashable
            raise CaseError(path, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    return conv


def _list(item: Callable[[Any, str], T], max_len: int, min_len: int = 0) -> Callable[[Any, str], tuple[T, ...]]:
    def conv(value: Any, path: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise CaseError(path, f"must be a list, not {_kind(value)}")
        if not min_len <= len(value) <= max_len:
            raise CaseError(path, f"must have {min_len}..{max_len} items, got {len(value)}")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return conv


def _hex(max_len: int) -> Callable[[Any, str], bytes]:
    def conv(value: Any, path: str) -> bytes:
        text = _str(value, path)
        try:
            data = bytes.fromhex(text)
        except ValueError:
            raise CaseError(path, "must be hex digits, two per byte") from None
        if not 1 <= len(data) <= max_len:
            raise CaseError(path, f"must hold 1..{max_len} bytes, got {len(data)}")
        return data

    return conv


_u32 = _int_in(0, U32)
_u64 = _int_in(0, U64)


def _verdict(value: Any, path: str) -> Verdict:
    if value == "PASS":
        return SK_PASS
    if value == "DROP":
        return SK_DROP
    if value == LAST_RC:
        return LAST_RC
    if isinstance(value, str):
        raise CaseError(path, f"must be PASS, DROP, {LAST_RC} or a u32, got {value!r}")
    return _u32(value, path)


def _step(value: Any, path: str) -> Step:
    r = _Reader(value, path)
    op = r.get("op", _choice(STEP_TYPES))
    if op in ("apply_bytes", "cork_bytes"):
        step: Step = STEP_TYPES[op](bytes=r.get("bytes", _u64))
    elif op == "pull_data":
        step = PullData(start=r.get("start", _u64), end=r.get("end", _u64), flags=r.get("flags", _u64, 0))
    elif op in ("push_data", "pop_data"):
        step = STEP_TYPES[op](start=r.get("start", _u64), len=r.get("len", _u64), flags=r.get("flags", _u64, 0))
    elif op == "write":
        step = Write(offset=r.get("offset", _u32), data=r.get("data", _hex(MAX_WRITE)))
    else:
        step = Redirect(key=r.get("key", _u32), flags=r.get("flags", _u64, 0))
    r.done()
    return step


def _invocation(value: Any, path: str) -> Invocation:
    r = _Reader(value, path)
    inv = Invocation(steps=r.get("steps", _list(_step, MAX_STEPS), ()), verdict=r.get("verdict", _verdict, SK_PASS))
    r.done()
    return inv


class _CaseLoader:
    """Loads events against the endpoint names and map of the case being read."""

    def __init__(self, endpoints: tuple[str, ...], map_spec: MapSpec) -> None:
        self.ep = _choice(endpoints)
        self.map = map_spec

    def key(self, value: Any, path: str) -> int:
        return _u32(value, path)

    def flags(self, allowed: Mapping[str, int]) -> Callable[[Any, str], tuple[str, ...]]:
        item = _choice(allowed)

        def conv(value: Any, path: str) -> tuple[str, ...]:
            names = _list(item, len(allowed))(value, path)
            if len(set(names)) != len(names):
                raise CaseError(path, "lists a flag twice")
            return names

        return conv

    def event(self, value: Any, path: str) -> Event:
        r = _Reader(value, path)
        op = r.get("op", _choice(EVENT_TYPES))
        size = _int_in(0, MAX_SEND)
        event: Event
        if op == "send":
            event = Send(ep=r.get("ep", self.ep), len=r.get("len", size),
                         flags=r.get("flags", self.flags(SEND_FLAGS), ()))
        elif op == "sendmsg":
            event = SendMsg(ep=r.get("ep", self.ep), iov=r.get("iov", _list(size, MAX_IOV, 1)),
                            flags=r.get("flags", self.flags(SEND_FLAGS), ()))
            if event.size > MAX_SEND:
                raise CaseError(r.sub("iov"), f"adds up to {event.size}, more than {MAX_SEND}")
        elif op == "sendfile":
            event = SendFile(ep=r.get("ep", self.ep), len=r.get("len", size))
        elif op == "splice":
            event = Splice(ep=r.get("ep", self.ep), len=r.get("len", _int_in(0, MAX_SPLICE)),
                           flags=r.get("flags", self.flags(SPLICE_FLAGS), ()))
        elif op == "recv":
            event = Recv(ep=r.get("ep", self.ep), len=r.get("len", _int_in(0, MAX_RECV)),
                         peek=r.get("peek", _bool, False))
        elif op == "fionread":
            event = Fionread(ep=r.get("ep", self.ep))
        elif op == "close":
            event = Close(ep=r.get("ep", self.ep), rst=r.get("rst", _bool, False))
        elif op == "shutdown":
            event = Shutdown(ep=r.get("ep", self.ep), how=r.get("how", _choice(SHUT_HOW), "SHUT_WR"))
        elif op == "map_delete":
            event = MapDelete(key=r.get("key", self.key))
        elif op == "map_insert":
            event = MapInsert(key=r.get("key", self.key), ep=r.get("ep", self.ep), flags=r.get("flags", _u64, 0))
        elif op == "detach":
            event = Detach()
        else:
            event = Attach()
        r.done()
        return event


def _map_spec(value: Any, path: str) -> MapSpec:
    r = _Reader(value, path)
    spec = MapSpec(type=r.get("type", _choice(MAP_TYPES), "sockmap"), size=r.get("size", _int_in(1, MAX_MAP_SIZE), 16))
    r.done()
    return spec


def _payload(value: Any, path: str) -> Payload:
    r = _Reader(value, path)
    p = Payload(pattern=r.get("pattern", _choice(PATTERNS), "alphabet"), seed=r.get("seed", _u64, 0))
    r.done()
    return p


def case_from_dict(obj: Any) -> Case:
    """Build a Case from parsed JSON, or raise CaseError naming the first bad field."""
    r = _Reader(obj, "")
    version = r.get("format", _int_in(0, 1 << 31))
    if version > FORMAT_VERSION:
        raise CaseError("format", f"version {version} is newer than this diffuzz reads ({FORMAT_VERSION}); "
                                  "upgrade diffuzz")
    if version < 1:
        raise CaseError("format", f"version {version} does not exist (the first is 1)")
    pairs = r.get("pairs", _int_in(1, MAX_PAIRS), 1)
    map_spec = r.get("map", _map_spec, MapSpec())
    endpoints = tuple(f"{side}{i}" for i in range(pairs) for side in ("c", "p"))
    loader = _CaseLoader(endpoints, map_spec)

    def entry(value: Any, path: str) -> MapEntry:
        e = _Reader(value, path)
        out = MapEntry(key=e.get("key", loader.key), ep=e.get("ep", loader.ep))
        e.done()
        return out

    def sockopt(value: Any, path: str) -> SockOpt:
        o = _Reader(value, path)
        buf = _int_in(1, 1 << 30)
        out = SockOpt(ep=o.get("ep", loader.ep), sndbuf=o.get("sndbuf", buf, None), rcvbuf=o.get("rcvbuf", buf, None))
        o.done()
        return out

    def meta(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise CaseError(path, f"must be an object, not {_kind(value)}")
        return value

    case = Case(
        name=r.get("name", _str, ""),
        family=r.get("family", _choice(FAMILIES), "ipv4"),
        map=map_spec,
        pairs=pairs,
        inserts=r.get("inserts", _list(entry, 2 * MAX_PAIRS * 4), ()),
        program=r.get("program", _list(_invocation, MAX_PROGRAMS, 1), (Invocation(),)),
        events=r.get("events", _list(loader.event, MAX_EVENTS), ()),
        fresh_thread=r.get("fresh_thread", _bool, True),
        payload=r.get("payload", _payload, Payload()),
        sockopts=r.get("sockopts", _list(sockopt, 2 * MAX_PAIRS), ()),
        meta=r.get("meta", meta, {}),
    )
    r.done()
    return case


def loads_case(text: str) -> Case:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaseError("", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise CaseError("", "nested too deeply to be a case") from None
    return case_from_dict(obj)


def load_case(path: str) -> Case:
    """Read a case file; every failure is a CaseError whose message names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CaseError("", f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CaseError("", f"{path}: not UTF-8 text") from None
    try:
        return loads_case(text)
    except CaseError as e:
        raise CaseError("", f"{path}: {e}") from None
