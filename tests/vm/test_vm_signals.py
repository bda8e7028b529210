"""A VM campaign stops cleanly on a stop signal to its process group or to one of its VMs (qemu
runs in a session of its own: a signal to the group does not reach it, one sent to it alone asks
the campaign to stop, kernel_runner/vm/machine.py), and leaves no qemu behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffuzz.cli.doctor import SMOKE_KERNEL

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kernel(needs=("vm",)), pytest.mark.slow]


def _children(pid: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and name.encode() in cmd:
            found.append(int(stat.parent.name))
    return found


def _execs(workdir: Path) -> int:
    try:
        return int(json.loads((workdir / "stats.json").read_text()).get("execs_done", 0))
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("target", ["group", "qemu"])
def test_a_stop_signal_ends_a_vm_campaign_cleanly_and_no_vm_is_left(tmp_path: Path, target: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "diffuzz.cli.commands", "fuzz", "--kernel", f"vm:{SMOKE_KERNEL}",
                             "--jobs", "1", "--seed", "5", "--duration", "300", "--stats-interval", "0.2",
                             "--workdir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    end = time.monotonic() + 180
    while _execs(tmp_path) < 20:
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()[0] if proc.poll() else "slow"
        time.sleep(0.2)
    [qemu] = _children(proc.pid, "qemu-system")
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.kill(qemu, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "diffuzz fuzz: summary" in out
    assert not Path(f"/proc/{qemu}").exists() or b"qemu" not in Path(f"/proc/{qemu}/cmdline").read_bytes()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "stop"
