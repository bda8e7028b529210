"""Soak: run a `diffuzz fuzz` campaign and sample its whole process tree from the first second.

    .venv/bin/python bench/soak.py --duration 3600 --workdir /tmp/soak [--jobs 2] [--every 10]
                                   [--plant drop_not_sticky]

--plant NAME runs the campaign with one of tests/quality/test_planted_bugs.py's model bugs in
the model (the fuzz process's, and so the triage process's, which it forks), so findings keep
coming on a kernel the model otherwise matches: what a finding leaves behind shows.

Every --every seconds the sampler walks the campaign's process tree (the fuzz process, its
kernel workers, the bcc confirmation worker, any replacement of a lost worker) and records:
processes, RSS (VmRSS, kB), open fds, and the BPF objects among them (an fd whose fdinfo has
`map_type:` is a map, `prog_type:` a program), plus execs and findings from WORKDIR/stats.json.
Rows go to WORKDIR/soak.csv as they are taken, so a soak stopped early still has its data;
WORKDIR/soak-procs.csv has the same numbers per process (pid and role), to tell which process
a change belongs to.

The report compares the first and last tenth of the run (after a warm-up: the first samples see
imports and the first compile) and prints the maxima.  "Flat" means the last tenth's mean is
within a few percent (RSS) or a few objects (fds, BPF) of the mean after warm-up; the numbers
are printed so the reader can judge.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sample:
    t: float
    procs: int
    rss_kb: int
    fds: int
    bpf_maps: int
    bpf_progs: int
    execs: int
    findings: int


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:  # the process ended between the listing and the read
        pass
    return out


def _tree(root: int) -> list[int]:
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(_children(pid))
    return seen


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> tuple[int, int, int]:
    fds = maps = progs = 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0, 0, 0
    for name in names:
        fds += 1
        try:
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                info = f.read()
        except OSError:  # closed since the listing
            continue
        maps += "map_type:" in info
        progs += "prog_type:" in info
    return fds, maps, progs


def _stats(workdir: Path) -> tuple[int, int]:
    try:
        stats = json.loads((workdir / "stats.json").read_text())
    except (OSError, ValueError):  # not written yet, or mid-rename on a slow disk
        return 0, 0
    return int(stats.get("execs_done", 0)), int(stats.get("unique_findings", 0))


# The campaign with a planted model bug: sys.argv[1] names it, the rest is the diffuzz command line.
PLANT_BOOT = """
import sys
sys.path.insert(0, {root!r})
from tests.quality.test_planted_bugs import BUGS, _planted
[bug] = [b for b in BUGS if b.name == sys.argv[1]]
planted = _planted(bug)  # kept: a collected context manager would take the bug back out
planted.__enter__()  # for the whole run (and the triage process, a fork of this one)
from diffuzz.cli.commands import main
sys.argv = ["diffuzz", *sys.argv[2:]]
main()
"""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _role(pid: int, root: int) -> str:
    """'fuzz', 'triage', 'worker interp', 'triage worker interp', 'worker bcc', ... from the
    command line and the parent (the triage process is a fork of the fuzz process)."""
    if pid == root:
        return "fuzz"
    if _ppid(pid) != root and _ppid(_ppid(pid)) == root:
        return "triage " + _role(pid, _ppid(pid))
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "kernel_runner.worker" in argv:
        return "worker " + (argv[argv.index("--backend") + 1] if "--backend" in argv else "?")
    return "triage" if "fuzz" in argv else Path(argv[0]).name


def sample(root: int, workdir: Path, t: float) -> tuple[Sample, list[tuple[float, int, str, int, int, int, int]]]:
    """The tree's totals, and each process's (t, pid, role, rss_kb, fds, maps, progs)."""
    pids = _tree(root)
    rss = fds = maps = progs = 0
    per: list[tuple[float, int, str, int, int, int, int]] = []
    for pid in pids:
        r = _rss_kb(pid)
        f, m, p = _fds(pid)
        rss, fds, maps, progs = rss + r, fds + f, maps + m, progs + p
        per.append((round(t, 1), pid, _role(pid, root), r, f, m, p))
    execs, findings = _stats(workdir)
    return Sample(round(t, 1), len(pids), rss, fds, maps, progs, execs, findings), per


def report(rows: list[Sample], warmup: float) -> str:
    steady = [r for r in rows if r.t >= warmup] or rows
    tenth = max(1, len(steady) // 10)
    first, last = steady[:tenth], steady[-tenth:]
    lines = [f"{len(rows)} samples over {rows[-1].t:.0f} s; warm-up {warmup:.0f} s excluded; "
             f"execs {rows[-1].execs:,}, findings {rows[-1].findings}"]
    for name in ("procs", "rss_kb", "fds", "bpf_maps", "bpf_progs"):
        a = statistics.fmean(getattr(r, name) for r in first)
        b = statistics.fmean(getattr(r, name) for r in last)
        lo = min(getattr(r, name) for r in steady)
        hi = max(getattr(r, name) for r in steady)
        lines.append(f"  {name:9} first tenth {a:10.1f}  last tenth {b:10.1f}  "
                     f"change {b - a:+9.1f}  min {lo}  max {hi}")
    return "\n".join(lines)


def report_roles(per: list[tuple[float, int, str, int, int, int, int]], warmup: float) -> str:
    """RSS per role (all processes of a role together), first and last tenth after warm-up."""
    lines = []
    for role in sorted({p[2] for p in per}):
        by_t: dict[float, int] = {}
        for p in per:
            if p[2] == role and p[0] >= warmup:
                by_t[p[0]] = by_t.get(p[0], 0) + p[3]
        if not by_t:
            continue
        rss = [by_t[t] for t in sorted(by_t)]
        tenth = max(1, len(rss) // 10)
        a, b = statistics.fmean(rss[:tenth]), statistics.fmean(rss[-tenth:])
        lines.append(f"  {role:22} RSS first tenth {a / 1024:7.1f} MB  last tenth {b / 1024:7.1f} MB  "
                     f"change {100 * (b - a) / a:+5.1f}%")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--workdir", type=Path, required=True, help="campaign directory (outside the repo)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--plant", metavar="BUG", help="a planted model bug of tests/quality/test_planted_bugs.py")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    fuzz = ["fuzz", "--duration", str(args.duration), "--jobs", str(args.jobs), "--workdir", str(args.workdir)]
    if args.plant:
        cmd = [sys.executable, "-c", PLANT_BOOT.format(root=str(ROOT)), args.plant, *fuzz]
    else:
        cmd = [str(Path(sys.executable).parent / "diffuzz"), *fuzz]
    log = (args.workdir / "soak-fuzz.log").open("w")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    rows: list[Sample] = []
    everyone: list[tuple[float, int, str, int, int, int, int]] = []
    with (args.workdir / "soak.csv").open("w", newline="") as out, \
            (args.workdir / "soak-procs.csv").open("w", newline="") as out_procs:
        writer, procs = csv.writer(out), csv.writer(out_procs)
        writer.writerow([f.name for f in fields(Sample)])
        procs.writerow(["t", "pid", "role", "rss_kb", "fds", "bpf_maps", "bpf_progs"])
        try:
            while proc.poll() is None:
                row, per = sample(proc.pid, args.workdir, time.monotonic() - start)
                rows.append(row)
                writer.writerow(astuple(row))
                procs.writerows(per)
                everyone += per
                out.flush()
                out_procs.flush()
                time.sleep(args.every)
        except KeyboardInterrupt:
            proc.terminate()  # the campaign saves its state on SIGTERM
            proc.wait()
    log.close()
    print(" ".join(cmd) if not args.plant else f"diffuzz {' '.join(fuzz)} with the planted bug {args.plant}")
    print(f"exit status {proc.returncode}")
    if rows:
        print(report(rows, args.warmup))
        print(report_roles(everyone, args.warmup))
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
