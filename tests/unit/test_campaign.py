"""Campaign state: resume, stats, events, damaged state files, a full disk."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffuzz.engine.campaign import EVENTS, SEED_BLOCK, STATE, STATS, Campaign, CampaignError, FileOps

ARGV = ["diffuzz", "fuzz", "--workdir", "w"]


def open_camp(workdir: Path, **kw: object) -> Campaign:
    kw.setdefault("stderr", io.StringIO())
    return Campaign.open(workdir, ARGV, "6.18.0-test", "random", **kw)  # type: ignore[arg-type]


def events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / EVENTS).read_text().splitlines()]


def test_resume_continues_counts_features_and_seeds(tmp_path: Path) -> None:
    camp = open_camp(tmp_path)
    first = [camp.next_seed() for _ in range(5)]
    camp.record_execs(100)
    assert camp.add_features({1, 2, 3, 0xFFFF_FFFF}) == 4
    camp.record_finding("events[*].ret", new=True)
    camp.record_finding("events[*].ret", new=False)
    camp.record_flaky(bucket="runs[*].verdict")
    camp.record_hang()
    camp.close("time limit")

    again = open_camp(tmp_path)
    assert again.execs == 100
    assert again.feature_coverage == 4 and again.add_features({3, 5}) == 1
    assert again.unique_findings == 1
    seeds = [again.next_seed() for _ in range(5)]
    assert min(seeds) > max(first) and not set(seeds) & set(first)
    again.record_execs(1)
    again.close("done")
    stats = json.loads((tmp_path / STATS).read_text())
    assert stats["execs_done"] == 101
    assert (stats["findings_total"], stats["unique_findings"], stats["flaky"], stats["hangs"]) == (2, 1, 1, 1)
    assert stats["feature_coverage"] == 5 and stats["sessions"] == 2
    assert stats["engine"] == "random" and stats["kernel_release"] == "6.18.0-test"
    assert stats["command_line"] == " ".join(ARGV) and stats["pid"] == os.getpid()
    kinds = [e["kind"] for e in events(tmp_path)]
    assert kinds == ["start", "new_finding", "finding", "flaky", "hang", "stop", "resume", "stop"]
    assert events(tmp_path)[1]["bucket"] == "events[*].ret"
    assert events(tmp_path)[5]["reason"] == "time limit"


def test_seeds_handed_out_before_a_crash_are_never_reused(tmp_path: Path) -> None:
    camp = open_camp(tmp_path, flush_interval=3600)
    handed = [camp.next_seed() for _ in range(1000)]
    # No close: the process "dies" here; only what open() and next_seed() saved is on disk.
    os.close(camp._lock_fd)
    os.close(camp._events_fd)
    again = open_camp(tmp_path)
    assert again.next_seed() > max(handed)
    again.close("done")


def test_stats_rewritten_at_most_every_interval(tmp_path: Path) -> None:
    camp = open_camp(tmp_path, flush_interval=3600)
    assert camp.maybe_flush() is False
    camp.record_execs(7)
    camp.flush_interval = 0
    assert camp.maybe_flush() is True
    assert json.loads((tmp_path / STATS).read_text())["execs_done"] == 7
    camp.close("done")


def test_second_campaign_in_same_directory_is_refused(tmp_path: Path) -> None:
    camp = open_camp(tmp_path)
    with pytest.raises(CampaignError, match=f"in use by another diffuzz \\(pid {os.getpid()}\\)"):
        open_camp(tmp_path)
    camp.close("done")
    open_camp(tmp_path).close("done")


@pytest.mark.parametrize("damage", ["torn", "flipped", "missing"])
def test_damaged_state_is_reported_and_rebuilt_from_events(tmp_path: Path, damage: str) -> None:
    camp = open_camp(tmp_path)
    camp.next_seed()
    camp.record_execs(42)
    camp.add_features({9})
    camp.record_finding("b", new=True)
    camp.close("done")
    state = tmp_path / STATE
    data = state.read_bytes()
    if damage == "torn":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        state.write_bytes(data.replace(b'"execs": 42', b'"execs": 43'))
    else:
        state.unlink()
    err = io.StringIO()
    again = open_camp(tmp_path, stderr=err)
    assert again.execs == 42 and again.unique_findings == 1
    assert again.feature_coverage == 0  # features are not in the log: said, not guessed
    assert again.next_seed() >= SEED_BLOCK
    message = err.getvalue()
    assert "state.json" in message and "recovered from events.jsonl" in message
    expected = {"torn": "not a complete state file", "flipped": "checksum mismatch", "missing": "missing"}
    assert expected[damage] in message
    assert "Traceback" not in message
    assert [e["kind"] for e in events(tmp_path)][-2:] == ["problem", "resume"]
    again.close("done")


def test_no_state_and_no_events_starts_fresh(tmp_path: Path) -> None:
    (tmp_path / EVENTS).write_text("garbage\n")
    err = io.StringIO()
    camp = open_camp(tmp_path, stderr=err)
    assert camp.execs == 0 and "starting a new campaign" in err.getvalue()
    camp.close("done")


class FullDisk(FileOps):
    """Fails every write while `full` is set, as ENOSPC does."""

    def __init__(self) -> None:
        self.full = False

    def write_atomic(self, path: Path, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write_atomic(path, data)

    def append(self, fd: int, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().append(fd, data)


def test_full_disk_is_reported_once_and_retried(tmp_path: Path) -> None:
    disk = FullDisk()
    err = io.StringIO()
    camp = open_camp(tmp_path, fs=disk, stderr=err)
    camp.record_execs(5)
    camp.flush()
    before = {name: (tmp_path / name).read_bytes() for name in (STATE, STATS, EVENTS)}
    disk.full = True
    for _ in range(3):
        camp.record_execs(10)
        camp.record_finding("x", new=False)
        camp.flush()
    assert camp.execs == 35  # kept counting
    assert err.getvalue().count("No space left on device") == 3  # state, stats, events: once each
    assert {name: (tmp_path / name).read_bytes() for name in (STATE, STATS, EVENTS)} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / STATS).read_text())["execs_done"] == 5  # old file whole
    disk.full = False
    camp.flush()
    assert json.loads((tmp_path / STATS).read_text())["execs_done"] == 35
    assert "state saved again" in err.getvalue()
    camp.close("done")
    assert open_camp(tmp_path).execs == 35


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_real_tmpfs_full_in_private_mount_namespace(tmp_path: Path) -> None:
    """A tiny tmpfs mounted only inside a private mount namespace of a child (never the host's)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        import io, json, os, sys
        from diffuzz.engine.campaign import Campaign
        err = io.StringIO()
        camp = Campaign.open({str(mnt)!r}, ["t"], "r", "random", stderr=err)
        fd = os.open(os.path.join({str(mnt)!r}, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 512)
        except OSError:
            os.close(fd)
        for _ in range(200):
            camp.record_execs(1)
            camp.add_features(range(len(camp._s.features), len(camp._s.features) + 500))
            camp.flush()
        ok_while_full = json.load(open(os.path.join({str(mnt)!r}, "stats.json")))
        os.unlink(os.path.join({str(mnt)!r}, "filler"))
        camp.flush()
        camp.close("done")
        print(json.dumps({{"err": err.getvalue(), "while_full": ok_while_full["execs_done"],
                          "after": json.load(open(os.path.join({str(mnt)!r}, "stats.json")))["execs_done"],
                          "files": sorted(os.listdir({str(mnt)!r}))}}))
    """)
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
           f'mount -t tmpfs -o size=64k tmpfs "{mnt}" && exec "{sys.executable}" -c "$0"', script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    if proc.returncode != 0 and "mount" in proc.stderr and "permission" in proc.stderr.lower():
        pytest.skip(f"cannot mount tmpfs in a private namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "No space left on device" in out["err"]
    assert out["while_full"] == 0 and out["after"] == 200
    assert not [f for f in out["files"] if f.endswith(".tmp")]
    assert not any(mnt.iterdir())  # the host never saw the tmpfs
