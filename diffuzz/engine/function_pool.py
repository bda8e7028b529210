"""FunctionPool: a kernel pool look-alike over a plain function (tests, model-against-model fuzzing)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Data, Outcome

Model = Callable[[Case], Outcome]


class FunctionPool:
    """A kernel-pool look-alike over a plain function (for tests, and for fuzzing one model
    against another).  Same interface as kernel_runner.pool.KernelPool: run, imap, close.

    What it returns must look like a kernel outcome: the kernel reads concrete bytes, so the
    model's wildcard ranges (unwritten pushed bytes) are filled with the model's placeholder
    bytes; compare.py would otherwise report every wildcard on the kernel side."""

    def __init__(self, fn: Model) -> None:
        self.fn = fn

    def run(self, case: Case) -> Outcome:
        return _concrete(self.fn(case))

    def imap(self, cases: Iterable[Case]) -> Iterator[Outcome]:
        return map(self.run, cases)

    def close(self) -> None:
        pass


def _concrete(o: Outcome) -> Outcome:
    def data(d: Data | None) -> Data | None:
        return Data(d.raw) if d is not None and d.unknown else d

    return replace(
        o,
        events=tuple(replace(e, data=data(e.data)) if e.data is not None and e.data.unknown else e for e in o.events),
        endpoints={name: replace(ep, rx=data(ep.rx)) if ep.rx.unknown else ep for name, ep in o.endpoints.items()},
        runs=tuple(replace(r, head=data(r.head)) if r.head is not None and r.head.unknown else r for r in o.runs),
    )
