"""The reference model of the kernel sk_msg send path (standard library only).

`sim.run(case)` returns the model's Outcome for a Case: pure, deterministic, no I/O.
"""

from sim.syscalls import run

__all__ = ["run"]
