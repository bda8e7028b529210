"""The zone audit: how often each deterministic-zone rule (diffuzz/engine/zone.py) changes a case.

    .venv/bin/python bench/zone_audit.py [--cases N] [--seed S]

Generates N cases the way a campaign does (random_case(seed, i), the default GenConfig) and
counts, per rule, the cases it rewrote: generate() reports every rule that changed something
(its `hits`).  Also counts what the zone now lets through that it once kept out: named sender
threads, many sends to one socket, sends that end with ENOSPC or a full ring.  The table in
docs/zone.md is this script's output; bench/RESULTS.md keeps the run.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim
from diffuzz.contract.case import SEND_TYPES
from diffuzz.engine.choice import RandomChooser
from diffuzz.engine.generate import case_seed, generate
from diffuzz.engine.zone import DEFAULT, zone_violation

RULES = ("total_bytes", "push_len", "pushpop_repeating", "pushpop_max", "apply_runs", "sends_per_sender",
         "more_size", "splice_k1", "layout_doubt")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    hits: collections.Counter[str] = collections.Counter()
    reach: collections.Counter[str] = collections.Counter()
    violations = 0
    start = time.perf_counter()
    for i in range(args.cases):
        h: set[str] = set()
        case = generate(RandomChooser(case_seed(args.seed, i)), DEFAULT, h)
        hits.update(h)
        if zone_violation(case) is not None:
            violations += 1
        sends = [e for e in case.events if isinstance(e, SEND_TYPES)]
        if case.shared_threads:
            reach["named sender threads"] += 1
        if any(sum(1 for e in sends if e.ep == ep) > 8 for ep in case.endpoints()):
            reach["more than 8 sends to one socket"] += 1
        out = sim.run(case)
        if any(r.ret == "ENOSPC" for r in out.events):
            reach["a send returns ENOSPC (full ring)"] += 1
        if "K4" in out.notes.get("kernel_bugs", ()):
            reach["the model copies K4"] += 1
    seconds = time.perf_counter() - start
    n = args.cases
    print(f"{n} cases (seed {args.seed}, default GenConfig) in {seconds:.1f} s; "
          f"{violations} left the zone after generation (must be 0)")
    print(f"{'rule':<20} {'cases changed':>14} {'share':>8}")
    for rule in RULES:
        print(f"{rule:<20} {hits[rule]:>14} {100 * hits[rule] / n:>7.2f}%")
    print("reach the zone now allows:")
    for what, count in reach.items():
        print(f"  {what:<40} {count:>7} {100 * count / n:>7.2f}%")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
