"""The third oracle through the real kernel log: a line the kernel prints while a case runs
reaches that case's outcome (kernel_runner/kmsg.py) and, if the table says it counts, breaks
the kernel_log invariant (diffuzz/engine/invariants.py).

The line is planted by writing to /dev/kmsg (root may), worded so that nobody reading the host's
log mistakes it for a real warning.  A campaign running on the same machine sees it too, in
whichever case its worker was running: its re-run does not show it again, so it is kept as flaky,
not a finding (measured: 4 flaky cases, all this line, in the 30-minute campaign of issue 11).
"""

from __future__ import annotations

import os
import time

import pytest

from diffuzz.contract.case import Case, MapEntry, Send
from diffuzz.engine.invariants import broken
from kernel_runner.kmsg import KmsgWatch
from kernel_runner.pool import KernelPool

PLANTED = "WARNING: diffuzz test line planted by tests/kernel/test_kmsg.py (not a kernel warning)"
CASE = Case(pairs=1, inserts=(MapEntry(0, "c0"), MapEntry(1, "p0")), events=(Send("c0", 10),))


def _plant(text: str) -> None:
    try:
        fd = os.open("/dev/kmsg", os.O_WRONLY)
    except OSError as e:  # a container without the device, or without the right to write it
        pytest.skip(f"cannot write the kernel log here: /dev/kmsg: {e.strerror}")
    try:
        os.write(fd, f"<4>{text}\n".encode())
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_watch_reads_only_what_came_after_it() -> None:
    watch = KmsgWatch()
    if watch.unavailable:
        pytest.skip(f"no kernel log here: {watch.unavailable}")
    try:
        watch.read()  # whatever arrived since it opened
        _plant(PLANTED + " #1")
        got = watch.read()
        assert any(line.endswith(PLANTED + " #1") for line in got), got
        assert watch.read() == []  # each record once
    finally:
        watch.close()


@pytest.mark.kernel
def test_a_kernel_log_line_during_a_case_is_a_broken_promise() -> None:
    with KernelPool(jobs=1) as pool:
        clean = pool.run(CASE)
        assert "kernel_log" not in clean.notes or not broken(CASE, clean)
        _plant(PLANTED + " #2")
        time.sleep(0.01)
        logged = pool.run(CASE)
    lines = logged.notes.get("kernel_log", [])
    assert any(PLANTED + " #2" in line for line in lines), logged.notes
    hits = [b for b in broken(CASE, logged) if b.invariant == "kernel_log"]
    assert hits and "WARNING" in hits[0].detail
