"""`run(case)`: one case on the real kernel (or a VM's), for callers that do not manage a pool.

The first call per backend starts one worker (about 0.1 s: a Python start, a namespace, the
backend); later calls reuse it.  The worker is closed at interpreter exit.  For many cases
use KernelPool.imap, which keeps every core busy.
"""

from __future__ import annotations

import atexit
import threading

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from kernel_runner.pool import KernelPool

DEADLINE = 10.0

_pools: dict[tuple[str, str], KernelPool] = {}
_lock = threading.Lock()


def run(case: Case, backend: str = "interp", kernel: str = "host") -> Outcome:
    """The kernel's Outcome for case (see KernelPool for hang and error outcomes), on this host's
    kernel or in a VM ("vm:NAME", booted at the first call).  Raises KernelUnsupported when the
    kernel or this process cannot run cases."""
    with _lock:
        pool = _pools.get((backend, kernel))
        if pool is None:
            pool = _pools[backend, kernel] = KernelPool(jobs=1, backend=backend, deadline=DEADLINE, kernel=kernel)
        return pool.run(case)


@atexit.register
def close() -> None:
    """Stop the workers started by run()."""
    with _lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
