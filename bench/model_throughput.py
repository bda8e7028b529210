"""Model throughput: sim.run cases per second on the standard mix, one core.

The standard mix (diffuzz.engine.generate.standard_mix): 2 pairs, 1-4 steps per run, 5 sends of
1-4000 bytes, random helpers and arguments, PASS/DROP/redirects.  Cases are generated first;
only sim.run is timed.

    .venv/bin/python bench/model_throughput.py [--cases 20000] [--seed 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sim
from diffuzz.engine.generate import standard_mix


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    ap.add_argument("--profile", action="store_true", help="print the top functions of one pass")
    args = ap.parse_args()
    if args.cases < 1 or args.repeat < 1:
        print("--cases and --repeat must be at least 1", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    cases = [standard_mix(args.seed, i) for i in range(args.cases)]
    gen = time.perf_counter() - t0
    run = sim.run

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for c in cases:
            run(c)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)

    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for c in cases:
            run(c)
        best = min(best, time.perf_counter() - t0)
    runs = sum(run(c).run_count for c in cases[:1000])
    print(f"generated {args.cases} standard-mix cases in {gen:.2f}s ({args.cases / gen:,.0f}/s, not timed below)")
    print(f"model: {args.cases / best:,.0f} cases/s  ({best / args.cases * 1e6:.1f} us/case, best of {args.repeat}, "
          f"one core; {runs / min(1000, args.cases):.1f} program runs per case)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
