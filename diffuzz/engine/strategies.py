"""Hypothesis strategies for Cases, built on the same generator as the random engine.

`cases()` hands Hypothesis' `draw` to diffuzz.engine.generate through a HypothesisChooser, so every
case Hypothesis finds is one the fuzz loop could also have generated, and Hypothesis shrinks it
by shrinking the choices (toward the first option of every table, diffuzz/engine/choice.py).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from diffuzz.contract.case import Case
from diffuzz.engine.choice import HypothesisChooser
from diffuzz.engine.generate import generate
from diffuzz.engine.zone import DEFAULT, STANDARD_MIX, GenConfig


@st.composite
def cases(draw: Any, config: GenConfig = DEFAULT) -> Case:
    """A Case from the generator's distribution (the spec §10 deterministic zone by default)."""
    return generate(HypothesisChooser(draw), config)


def standard_mix_cases() -> st.SearchStrategy[Case]:
    """The benchmarks' standard mix as a strategy."""
    return cases(STANDARD_MIX)
