"""VM boots and the seeds in a VM: how often a guest comes up, how long it takes, what a case costs.

    .venv/bin/python bench/vm_boot.py [--kernels 6.1,6.12,7.2] [--boots 20]

For each fetched kernel (diffuzz kernels fetch NAME): `--boots` times, one VM is booted to a ready
worker (kernel_runner/vm/machine.py: qemu under TCG, the guest's init, the worker's hello) and
runs the seeds once; then it is thrown away.  A boot that never says ready (qemu double fault,
a guest panic at boot, the boot timeout) is a failed boot, with the reason.  VMs run one at a
time: on this 2-core machine class two kernel benchmarks at once measure each other.

The report: boots that came up / boots, time to ready (median, max), the seeds' wall time in
the VM (median), and the host's load average (other work skews every number).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffuzz.contract.case import load_case
from kernel_runner.backend import KernelUnsupported
from kernel_runner.pool import KernelPool
from kernel_runner.vm import catalog

SEEDS = sorted((Path(__file__).resolve().parent.parent / "corpus" / "seeds").glob("*.json"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default=",".join(catalog.KERNELS))
    ap.add_argument("--boots", type=int, default=20)
    args = ap.parse_args()
    cases = [load_case(p) for p in SEEDS]
    print(f"host {os.uname().release}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"{len(cases)} seeds per boot")
    for name in args.kernels.split(","):
        if catalog.fetched(name) is None:
            print(f"vm:{name}: not fetched (diffuzz kernels fetch {name}); skipped")
            continue
        ready: list[float] = []
        seeds: list[float] = []
        failures: list[str] = []
        for _ in range(args.boots):
            start = time.monotonic()
            try:
                pool = KernelPool(jobs=1, kernel=f"vm:{name}", pin=False)
            except KernelUnsupported as e:
                failures.append(str(e).splitlines()[0][:160])
                continue
            try:
                ready.append(time.monotonic() - start)
                t = time.monotonic()
                outs = list(pool.imap(cases))
                seeds.append(time.monotonic() - t)
                errors = sum("error" in o.notes or "crash" in o.notes or o.hang for o in outs)
                if errors:
                    failures.append(f"{errors} seeds failed after boot")
            finally:
                pool.close()
        line = (f"vm:{name}: {len(ready)}/{args.boots} boots ready; time to ready median "
                f"{statistics.median(ready):.1f} s, max {max(ready):.1f} s; {len(cases)} seeds in "
                f"{statistics.median(seeds):.2f} s (median)" if ready else f"vm:{name}: 0/{args.boots} boots ready")
        print(line + f"; load {os.getloadavg()[0]:.2f}", flush=True)
        for f in sorted(set(failures)):
            print(f"  failed: {f} (x{failures.count(f)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
