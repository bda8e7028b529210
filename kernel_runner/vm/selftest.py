"""Backends that break a guest on purpose, for the VM smoke test (tests/vm/): the pool must turn a
guest kernel that dies into a crash outcome with the console kept, and a guest that stops
answering into a hang.  They load like any backend (`--backend kernel_runner.vm.selftest:Panic`)
and act on the first case; outside a VM they refuse to start, so no host can be crashed by one.
"""

from __future__ import annotations

import os
import time

from diffuzz.contract.case import Case
from kernel_runner.backend import CaseProgram, KernelUnsupported

GUEST_MARK = "/diffuzz-modules/order"  # only a diffuzz guest's initramfs has it (vm/image.py)


class _GuestOnly:
    name = "selftest"

    def __init__(self) -> None:
        if not os.path.exists(GUEST_MARK):
            raise KernelUnsupported("the self-test backends run only inside a diffuzz VM")

    def close(self) -> None:
        pass


class Panic(_GuestOnly):
    """The first case panics the guest kernel (sysrq 'c': a NULL dereference in the kernel)."""

    def prepare(self, case: Case) -> CaseProgram:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("c")
        raise AssertionError("the guest kernel survived sysrq-c")


class Hang(_GuestOnly):
    """The first case never finishes: the worker sleeps until the pool's deadline kills the VM."""

    def prepare(self, case: Case) -> CaseProgram:
        while True:
            time.sleep(3600)
