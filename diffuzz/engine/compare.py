"""Exact comparison of a kernel Outcome with a model Outcome.

Every field is compared exactly, except the ones listed in MASKS below, each with the
reason it cannot be.  Nothing else in diffuzz may skip or loosen a field: if a new kind of
non-determinism turns up, it gets a row here and a sentence in docs/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from diffuzz.contract.outcome import Data, Outcome


@dataclass(frozen=True)
class Mask:
    field: str
    rule: str
    reason: str


# The one table of masked or bounded fields.
MASKS: tuple[Mask, ...] = (
    Mask(
        "endpoints.*.rx, events[*].data (unknown byte ranges)",
        "a byte the model marks unknown matches any kernel byte; the length still must match",
        "bytes inserted by bpf_msg_push_data are uninitialised kernel memory (spec §6.5) unless the "
        "program writes them",
    ),
    Mask(
        "runs[*].win_in, runs[*].steps[*].win (model value None); runs[*].head (either value None)",
        "not compared",
        "data_end - data depends on the sending thread's page frag and on page recycling (spec §2.1, "
        "§10); the model predicts it only when the case pins the layout (fresh_thread) or after a pull; "
        "a head is also missing from outcomes recorded before runners kept it (corpus kernel.json files)",
    ),
    Mask(
        "notes",
        "never compared",
        "side-specific facts: kernel release, backend, timings",
    ),
)


@dataclass(frozen=True)
class Difference:
    path: str  # e.g. "events[3].ret", "endpoints.p0.rx"
    kernel: Any
    model: Any

    def kind(self) -> str:
        """The path with indexes and endpoint names folded: the part of a signature."""
        path = re.sub(r"\[\d+\]", "[*]", self.path)
        return re.sub(r"^endpoints\.[cp]\d+", "endpoints.*", path)


def compare(kernel: Outcome, model: Outcome) -> list[Difference]:
    """All differences between the two outcomes, in field order; [] when they agree."""
    return list(_differences(kernel, model))


def _differences(k: Outcome, m: Outcome) -> Iterator[Difference]:
    if k.hang or m.hang:
        if k.hang != m.hang:
            yield Difference("hang", k.hang, m.hang)
        return
    yield from _seq("inserts", k.inserts, m.inserts, _plain)
    yield from _seq("events", k.events, m.events, _event)
    if k.run_count != m.run_count:
        yield Difference("run_count", k.run_count, m.run_count)
    yield from _seq("runs", k.runs, m.runs, _run)
    for name in sorted(set(k.endpoints) | set(m.endpoints)):
        ke, me = k.endpoints.get(name), m.endpoints.get(name)
        path = f"endpoints.{name}"
        if ke is None or me is None:
            yield Difference(path, ke, me)
            continue
        yield from _data(f"{path}.rx", ke.rx, me.rx)
        yield from _plain(f"{path}.fionread", ke.fionread, me.fionread)
        yield from _plain(f"{path}.end", ke.end, me.end)


def _plain(path: str, k: Any, m: Any) -> Iterator[Difference]:
    if k != m:
        yield Difference(path, k, m)


def _seq(path: str, ks: tuple, ms: tuple, each: Any) -> Iterator[Difference]:
    if len(ks) != len(ms):
        yield Difference(f"{path}.length", len(ks), len(ms))
    for i, (k, m) in enumerate(zip(ks, ms, strict=False)):
        yield from each(f"{path}[{i}]", k, m)


def _data(path: str, k: Data | None, m: Data | None) -> Iterator[Difference]:
    if k is None or m is None:
        if k is not m:
            yield Difference(path, k if k is None else k.to_json(), m if m is None else m.to_json())
        return
    if k.unknown:
        # The kernel reports what it read; it never has holes.  If it does, say so.
        yield Difference(path, k.to_json(), m.to_json())
    elif not m.matches(k.raw):
        yield Difference(path, k.to_json(), m.to_json())


def _event(path: str, k: Any, m: Any) -> Iterator[Difference]:
    yield from _plain(f"{path}.ret", k.ret, m.ret)
    yield from _plain(f"{path}.sigpipe", k.sigpipe, m.sigpipe)
    yield from _data(f"{path}.data", k.data, m.data)


def _window(path: str, k: int | None, m: int | None) -> Iterator[Difference]:
    if m is not None and k != m:
        yield Difference(path, k, m)


def _run(path: str, k: Any, m: Any) -> Iterator[Difference]:
    yield from _plain(f"{path}.ep", k.ep, m.ep)
    yield from _plain(f"{path}.size_in", k.size_in, m.size_in)
    yield from _window(f"{path}.win_in", k.win_in, m.win_in)
    if len(k.steps) != len(m.steps):
        yield Difference(f"{path}.steps.length", len(k.steps), len(m.steps))
    for i, (ks, ms) in enumerate(zip(k.steps, m.steps, strict=False)):
        yield from _plain(f"{path}.steps[{i}].rc", ks.rc, ms.rc)
        yield from _window(f"{path}.steps[{i}].win", ks.win, ms.win)
    yield from _plain(f"{path}.size_out", k.size_out, m.size_out)
    yield from _plain(f"{path}.verdict", k.verdict, m.verdict)
    yield from _plain(f"{path}.ctx", k.ctx, m.ctx)
    if m.head is not None and k.head is not None:
        yield from _data(f"{path}.head", k.head, m.head)
