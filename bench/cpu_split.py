"""Where a differential case's CPU goes: the fuzz process against its kernel workers.

    .venv/bin/python bench/cpu_split.py [--cases 10000] [--jobs 2] [--seed 77]

Runs the engine (diffuzz.engine.loop.Engine, the probed profile's model, no minimizing) over the
seed's cases on a real KernelPool and reads getrusage: the fuzz process's own CPU, and its
children's (the kernel workers; the triage process and its worker are idle here: no finding is
expected on a kernel that matches its profile).  On N cores the loop cannot beat
N / (CPU per case) cases per second, however well the two sides overlap.  Needs root.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffuzz.engine.corpus import Corpus
from diffuzz.engine.loop import Engine, FuzzConfig
from diffuzz.engine.probes import model_for, probe_and_choose


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=77)
    args = ap.parse_args()
    from kernel_runner.pool import KernelPool

    with KernelPool(jobs=args.jobs) as pool, tempfile.TemporaryDirectory() as d:
        choice = probe_and_choose(pool.run, None)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        engine = Engine(FuzzConfig(seed=args.seed, cases=args.cases, minimize_seconds=0), pool, model_for(choice),
                        Corpus(d), profile=choice.profile)
        st = engine.run()
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped by the pool's close
    n = st.cases
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(f"{n} cases in {dt:.1f} s = {n / dt:.0f} cases/s, profile {choice.profile.name}, {st.mismatches} mismatches")
    print(f"fuzz process:   {(user + system) / n * 1e6:6.0f} us CPU a case ({user / n * 1e6:.0f} user)")
    print(f"kernel workers: {(kids.ru_utime + kids.ru_stime) / n * 1e6:6.0f} us CPU a case "
          f"({kids.ru_utime / n * 1e6:.0f} user, {kids.ru_stime / n * 1e6:.0f} system)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
