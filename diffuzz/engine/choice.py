"""The choice interface: every random decision the case generator makes goes through it.

One generator (diffuzz/engine/generate.py) serves three engines, which differ only in where the
choices come from:

- RandomChooser(seed): a seeded random.Random; fast, for long `diffuzz fuzz` runs.
- BytesChooser(data): reads choices from a byte string, like atheris' FuzzedDataProvider, so a
  coverage-guided fuzzer's mutations of the bytes become mutations of the case.  When the bytes
  run out every choice takes its simplest value (lo, False, the first option), so any byte
  string, even b"", decodes to a valid case.
- HypothesisChooser(draw): draws through Hypothesis (st.composite's `draw`, or st.data()), so
  Hypothesis can shrink a case by shrinking the choices.

The contract that makes shrinking work for all of them: the *first* option of `choose` and
`weighted`, `lo` of `draw_int` and False of `draw_bool` are the simplest values; the generator
orders its options accordingly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Chooser:
    """The base: subclasses give draw_int and draw_bool; the rest is built on those two."""

    def draw_int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi], both ends included."""
        raise NotImplementedError

    def draw_bool(self, p: float = 0.5) -> bool:
        """True with probability p (a random engine's view; others just decide)."""
        raise NotImplementedError

    def choose(self, seq: Sequence[T]) -> T:
        """One element of a non-empty sequence."""
        return seq[self.draw_int(0, len(seq) - 1)]

    def weighted(self, table: WeightTable[T]) -> T:
        """One option of a WeightTable, with probability proportional to its weight."""
        return table.options[table.index_of(self.draw_int(0, table.total - 1))]


class WeightTable(Generic[T]):
    """Options with integer weights, prepared once (the cumulative sums) and reused per case.

    Kept as integers so a byte-driven chooser maps a drawn integer to an option exactly.
    """

    __slots__ = ("cumulative", "lookup", "options", "total")

    def __init__(self, pairs: Sequence[tuple[T, int]]) -> None:
        if not pairs or any(w <= 0 for _, w in pairs):
            raise ValueError("a weight table needs options with positive weights")
        self.options: tuple[T, ...] = tuple(o for o, _ in pairs)
        acc = 0
        cumulative = []
        for _, w in pairs:
            acc += w
            cumulative.append(acc)
        self.cumulative: tuple[int, ...] = tuple(cumulative)
        self.total = acc
        # One slot per unit of weight: the random engine picks an option with one index.
        self.lookup: tuple[T, ...] = tuple(o for o, w in pairs for _ in range(w))

    def index_of(self, x: int) -> int:
        # Linear scan: tables have a handful of options, so this beats bisect's call overhead.
        for i, c in enumerate(self.cumulative):
            if x < c:
                return i
        return len(self.cumulative) - 1


class RandomChooser(Chooser):
    """Choices from random.Random(seed).  Methods avoid randint/choice: their argument
    checking costs more than the whole draw, and a case makes about a hundred draws."""

    __slots__ = ("_bits", "_random")

    def __init__(self, seed: int | str) -> None:
        r = random.Random(seed)
        self._random: Callable[[], float] = r.random
        self._bits: Callable[[int], int] = r.getrandbits

    def draw_int(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        if span <= 1 << 32:
            return lo + int(self._random() * span)
        # Wide ranges (u64 helper arguments): rejection sampling on exact bits.
        k = span.bit_length()
        while True:
            x = self._bits(k)
            if x < span:
                return lo + x

    def draw_bool(self, p: float = 0.5) -> bool:
        return self._random() < p

    def choose(self, seq: Sequence[T]) -> T:
        return seq[int(self._random() * len(seq))]

    def weighted(self, table: WeightTable[T]) -> T:
        return table.lookup[int(self._random() * table.total)]


class BytesChooser(Chooser):
    """Choices read from bytes, front to back (the FuzzedDataProvider model).

    An integer takes as many bytes as its range needs, little-endian, reduced modulo the
    range; a bool takes one byte.  Exhausted input yields the simplest value.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> int | None:
        if self.pos >= len(self.data):
            return None
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return int.from_bytes(chunk, "little")

    def draw_int(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        if span <= 1:
            return lo
        x = self._take((span.bit_length() + 7) // 8)
        return lo if x is None else lo + x % span

    def draw_bool(self, p: float = 0.5) -> bool:
        x = self._take(1)
        # Byte values below 256*p mean True, so the all-zero input is "all True" only for
        # p == 1; exhausted input means False (the simplest value).
        return x is not None and x < 256 * p

    @property
    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)


class HypothesisChooser(Chooser):
    """Choices drawn through Hypothesis, which then shrinks them toward lo / False / first.

    `draw` is the function st.composite passes in, or st.data()'s `data.draw`.
    Hypothesis is imported lazily so the other choosers stay dependency-free.
    """

    __slots__ = ("_booleans", "_draw", "_integers")

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self._draw = draw
        self._integers = st.integers
        self._booleans = st.integers(0, 255)

    def draw_int(self, lo: int, hi: int) -> int:
        return self._draw(self._integers(lo, hi))

    def draw_bool(self, p: float = 0.5) -> bool:
        # An 8-bit draw compared against p keeps the weighting; shrinking the byte toward 0
        # makes the answer False (the simplest), so the threshold is put at the top end.
        return self._draw(self._booleans) >= 256 - int(256 * p)
