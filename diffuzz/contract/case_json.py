"""Reading a Case from JSON, with validation that names the offending field (docs/case-format.md).

Part of the contract (diffuzz/contract/case.py gathers it): imports nothing else of the project.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from diffuzz.contract.case_data import Case, MapEntry, MapSpec, Payload, SockOpt
from diffuzz.contract.events import (
    EVENT_TYPES,
    Attach,
    Close,
    Detach,
    Event,
    Fionread,
    MapDelete,
    MapInsert,
    Recv,
    Send,
    SendFile,
    SendMsg,
    Shutdown,
    Splice,
)
from diffuzz.contract.limits import (
    FAMILIES,
    FORMAT_VERSION,
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
    MAX_THREADS,
    MAX_WRITE,
    PATTERNS,
    SEND_FLAGS,
    SHUT_HOW,
    SK_DROP,
    SK_PASS,
    SPLICE_FLAGS,
    U32,
    U64,
    CaseError,
)
from diffuzz.contract.program import LAST_RC, STEP_TYPES, Invocation, PullData, Redirect, Step, Verdict, Write

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
        thread = _int_in(0, MAX_THREADS - 1)
        event: Event
        if op == "send":
            event = Send(ep=r.get("ep", self.ep), len=r.get("len", size),
                         flags=r.get("flags", self.flags(SEND_FLAGS), ()), thread=r.get("thread", thread, None))
        elif op == "sendmsg":
            event = SendMsg(ep=r.get("ep", self.ep), iov=r.get("iov", _list(size, MAX_IOV, 1)),
                            flags=r.get("flags", self.flags(SEND_FLAGS), ()), thread=r.get("thread", thread, None))
            if event.size > MAX_SEND:
                raise CaseError(r.sub("iov"), f"adds up to {event.size}, more than {MAX_SEND}")
        elif op == "sendfile":
            event = SendFile(ep=r.get("ep", self.ep), len=r.get("len", size), thread=r.get("thread", thread, None))
        elif op == "splice":
            event = Splice(ep=r.get("ep", self.ep), len=r.get("len", _int_in(0, MAX_SPLICE)),
                           flags=r.get("flags", self.flags(SPLICE_FLAGS), ()), thread=r.get("thread", thread, None))
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
    if not case.fresh_thread and case.shared_threads:
        first = next(i for i, e in enumerate(case.events) if getattr(e, "thread", None) is not None)
        raise CaseError(f"events[{first}].thread", "names a sender thread, but fresh_thread is false (every send "
                                                   "then runs on the worker's own thread)")
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
