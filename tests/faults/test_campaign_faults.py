"""A campaign process killed with SIGKILL mid-run resumes: counts go on, seeds are not reused,
and no file it left behind is half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from diffuzz.engine.campaign_state import EVENTS, STATE, STATS, state_from_bytes

ROOT = Path(__file__).parents[2]

# A stand-in engine loop: every iteration takes a seed, counts an exec, adds a feature and
# flushes often (every 10 ms) so the kill is likely to land during a write.
LOOP = textwrap.dedent("""
    import sys
    from diffuzz.engine.campaign import Campaign
    camp = Campaign.open(sys.argv[1], ["loop"], "r", "random", flush_interval=0.01)
    print("execs", camp.execs, flush=True)
    limit = int(sys.argv[2])
    for _ in range(limit):
        seed = camp.next_seed()
        camp.record_execs(1)
        camp.add_features({seed % 5000})
        if seed % 97 == 0:
            camp.record_finding(f"bucket{seed % 3}", new=True)
        camp.maybe_flush()
        print("seed", seed, flush=True)
    camp.close("limit")
""")


def start(workdir: Path, limit: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", LOOP, str(workdir), str(limit)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_files_whole(workdir: Path) -> dict:
    state_from_bytes((workdir / STATE).read_bytes())  # raises on a torn or damaged file
    for line in (workdir / EVENTS).read_text().splitlines():
        json.loads(line)
    return json.loads((workdir / STATS).read_text())


def test_sigkill_then_resume(tmp_path: Path) -> None:
    # A first clean run, so the counts that must carry on are known exactly.
    proc = start(tmp_path, 500)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seen = [int(line.split()[1]) for line in out.splitlines() if line.startswith("seed")]
    last_stats = check_files_whole(tmp_path)
    assert last_stats["execs_done"] == 500
    for round_ in range(8):
        proc = start(tmp_path, 10**9)
        assert proc.stdout is not None
        header = proc.stdout.readline().split()
        assert header[0] == "execs", proc.stderr.read() if proc.stderr else ""
        # Counts continue: at least what the last whole stats.json said before the kill.
        assert int(header[1]) >= last_stats["execs_done"] >= 500
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 1000 + 700 * round_ and time.monotonic() < deadline:
            got.append(int(proc.stdout.readline().split()[1]))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert len(got) == 1000 + 700 * round_
        assert not set(got) & set(seen), "a resumed campaign handed out a seed again"
        seen += got
        last_stats = check_files_whole(tmp_path)

    # A last clean run: it finishes, and every file is whole, with no temporary left over.
    proc = start(tmp_path, 100)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    final = check_files_whole(tmp_path)
    assert final["execs_done"] >= last_stats["execs_done"] + 100
    assert final["sessions"] == 10
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    kinds = [json.loads(line)["kind"] for line in (tmp_path / EVENTS).read_text().splitlines()]
    assert kinds[0] == "start" and kinds.count("resume") == 9 and kinds[-1] == "stop"
