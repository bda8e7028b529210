"""The worker pipe's binary encoding of a Case and an Outcome (kernel_runner/worker.py, pool.py).

JSON is the contract's file format (case_json.py validates every field a person may have typed;
outcome.py writes hex for bytes), and on the pipe it cost about 230 µs of CPU a case: 94 in the
pool, 138 in the worker; these frames cost 71 and 58 (bench/RESULTS.md).  Here a
value goes as nested tuples in `marshal` (the interpreter's own format for .pyc constants: no
code runs on loading, bytes stay bytes): a dataclass as (its index in TYPES, its fields...);
in a field whose type can hold dataclasses, a tuple as a list and a mapping as a dict; every
other field (numbers, strings, bytes, tuples of those, an outcome's notes and a case's meta:
JSON-like values) as itself.

Trusted, not validated: both ends are this checkout (the pool starts its workers from it, and a
VM's image carries this very module, kernel_runner/vm/image.py), under the same Python (the
marshal format is per version), and a case was validated when it was made or read from a file.

A frame is MAGIC, the payload's length (4 bytes, little-endian) and the payload.  A JSON line
never starts with MAGIC, so a worker can take both (`frames` and `read_message`).
"""

from __future__ import annotations

import inspect
import marshal
import struct
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import IO, Any, TypeVar

from diffuzz.contract import case_data, events, outcome, program
from diffuzz.contract.case_data import Case
from diffuzz.contract.outcome import Outcome

T = TypeVar("T", Case, Outcome)
MAGIC = b"\x00"
_LEN = struct.Struct("<I")
HEADER = len(MAGIC) + _LEN.size

# Every dataclass of the contract, in a fixed order (both ends run the same code).
TYPES: tuple[type, ...] = tuple(
    cls for module in (case_data, program, events, outcome)
    for _, cls in sorted(vars(module).items())
    if inspect.isclass(cls) and is_dataclass(cls) and cls.__module__ == module.__name__
)
_INDEX: dict[type, int] = {cls: i for i, cls in enumerate(TYPES)}


def _holds_dataclass(hint: Any) -> bool:
    """Can a field of this type hint hold a contract dataclass (Event, tuple[Run, ...], ...)?"""
    return is_dataclass(hint) or any(_holds_dataclass(a) for a in typing.get_args(hint))


# Per type: its field names, and which of them hold dataclasses (the rest -- numbers, strings,
# bytes, tuples of those, the JSON-like notes and meta -- marshal carries as they are).
_NAMES: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in TYPES}
_NESTED: dict[type, tuple[bool, ...]] = {
    cls: tuple(_holds_dataclass(typing.get_type_hints(cls)[name]) for name in _NAMES[cls]) for cls in TYPES
}
_FLAT = frozenset(cls for cls in TYPES if not any(_NESTED[cls]))


def _enc(value: Any) -> Any:
    cls = type(value)
    index = _INDEX.get(cls)
    if index is not None:
        got = value.__dict__  # a dataclass instance's fields (no slots in the contract)
        if cls in _FLAT:
            return (index, *[got[name] for name in _NAMES[cls]])
        return (index, *[_enc(got[name]) if nested else got[name]
                         for name, nested in zip(_NAMES[cls], _NESTED[cls], strict=True)])
    if cls is tuple:
        return [_enc(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _enc(v) for k, v in value.items()}
    return value


def _dec(value: Any) -> Any:
    cls = type(value)
    if cls is tuple:
        # Built without __init__ (a frozen dataclass's sets each field through object.__setattr__,
        # most of the decoding's time): the encoder read these very fields off a built instance.
        made = TYPES[value[0]]
        obj = object.__new__(made)
        if made in _FLAT:
            obj.__dict__.update(zip(_NAMES[made], value[1:], strict=True))
        else:
            obj.__dict__.update(zip(_NAMES[made], [_dec(v) if nested else v for v, nested in
                                                   zip(value[1:], _NESTED[made], strict=True)], strict=True))
        return obj
    if cls is list:
        return tuple([_dec(v) for v in value])
    if cls is dict:
        return {k: _dec(v) for k, v in value.items()}
    return value


def frame(value: Case | Outcome) -> bytes:
    payload = marshal.dumps(_enc(value))
    return MAGIC + _LEN.pack(len(payload)) + payload


def unframe(payload: bytes, expect: type[T]) -> T:
    """The `expect` (Case or Outcome) in a frame's payload; ValueError if it is not one."""
    try:
        value = _dec(marshal.loads(payload))
    except (EOFError, ValueError, TypeError, IndexError, KeyError) as e:
        raise ValueError(f"not a diffuzz frame: {type(e).__name__}: {e}") from None
    if not isinstance(value, expect):
        raise ValueError(f"a {type(value).__name__} where a {expect.__name__} was expected")
    return value


class OutOfStep(ValueError):
    """What follows the frames read is not a frame.  `payloads`: the whole frames before it,
    taken off the buffer and still good."""

    def __init__(self, message: str, payloads: list[bytes]) -> None:
        super().__init__(message)
        self.payloads = payloads


def frames(buf: bytearray) -> list[bytes]:
    """Take every complete frame's payload off the front of `buf` (the rest stays for the next
    read); OutOfStep (a ValueError) where `buf` goes on with something that is not a frame."""
    out: list[bytes] = []
    while len(buf) >= HEADER:
        if buf[:1] != MAGIC:
            raise OutOfStep(f"not a diffuzz frame: {bytes(buf[:40])!r}", out)
        (n,) = _LEN.unpack_from(buf, len(MAGIC))
        if len(buf) < HEADER + n:
            break
        out.append(bytes(buf[HEADER:HEADER + n]))
        del buf[:HEADER + n]
    return out


def read_message(inp: IO[bytes]) -> tuple[bool, bytes] | None:
    """The next message on a blocking stream: (True, a frame's payload) or (False, a line);
    None at the end of the stream."""
    first = inp.read(1)
    if not first:
        return None
    if first != MAGIC:
        return False, first + inp.readline()
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    payload = inp.read(n)
    return (True, payload) if len(payload) == n else None
