"""What the kernel's promises (diffuzz/engine/invariants.py) cost per case: target under 10%.

    .venv/bin/python bench/oracle_cost.py [--cases N] [--jobs J] [--seed K]

On the fuzz stream's own cases (diffuzz.engine.generate.random_case, the traceable payload in
most), in one run:
1. per case in the main process: the model (sim.run), compare alone, and judge (compare plus
   the invariants on both outcomes, with the masking of never-written pushed bytes);
2. the kernel: pool.imap over the same cases (wall time per case with J workers);
3. end to end: the engine's loop (diffuzz.engine.loop.Engine) over the same seed, once with the
   oracle and once with judge() cut down to compare alone (monkeypatched), minimizing off.
The cost of the checks is reported against a case's cost in the loop (1 / loop rate).
Needs root and the interp backend; run nothing else on the kernel meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sim
from diffuzz.engine import loop
from diffuzz.engine.compare import compare
from diffuzz.engine.corpus import Corpus
from diffuzz.engine.generate import random_case
from diffuzz.engine.oracle import Verdict, judge
from diffuzz.engine.signature import diff_kinds


def _compare_only(case, kernel, model):  # the loop without the invariants
    diffs = tuple(compare(kernel, model))
    return Verdict(diffs, diff_kinds(diffs), (), ())


def _loop_rate(seed: int, n: int, jobs: int) -> tuple[float, int, int]:
    from kernel_runner.pool import KernelPool

    with tempfile.TemporaryDirectory() as d, KernelPool(jobs=jobs) as pool:
        engine = loop.Engine(loop.FuzzConfig(seed=seed, cases=n, minimize_seconds=0.0), pool, sim.run, Corpus(d))
        t = time.perf_counter()
        stats = engine.run()
        return n / (time.perf_counter() - t), stats.findings, stats.known


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    from kernel_runner.pool import KernelPool

    cases = [random_case(args.seed, i) for i in range(args.cases)]
    traced = sum(c.payload.pattern == "random" for c in cases)
    with KernelPool(jobs=args.jobs) as pool:
        t = time.perf_counter()
        kernels = list(pool.imap(cases))
        kernel_wall = (time.perf_counter() - t) / args.cases
    t = time.perf_counter()
    models = [sim.run(c) for c in cases]
    model_us = (time.perf_counter() - t) / args.cases * 1e6
    t = time.perf_counter()
    for k, m in zip(kernels, models, strict=True):
        compare(k, m)
    compare_us = (time.perf_counter() - t) / args.cases * 1e6
    t = time.perf_counter()
    broke = sum(bool(judge(c, k, m).kernel_broken) for c, k, m in zip(cases, kernels, models, strict=True))
    judge_us = (time.perf_counter() - t) / args.cases * 1e6
    checks_us = judge_us - compare_us

    with_rate, with_findings, with_known = _loop_rate(args.seed, args.cases, args.jobs)
    real = loop.judge
    loop.judge = _compare_only  # type: ignore[assignment]
    try:
        without_rate, _, _ = _loop_rate(args.seed, args.cases, args.jobs)
    finally:
        loop.judge = real

    print(f"cases: {args.cases} generated (seed {args.seed}), {traced} with the traceable payload, "
          f"{args.jobs} kernel worker(s); the kernel broke a promise in {broke}")
    print(f"kernel:       {kernel_wall * 1e6:8.1f} us/case wall ({1 / kernel_wall:.0f} cases/s)")
    print(f"model:        {model_us:8.1f} us/case (main process)")
    print(f"compare:      {compare_us:8.1f} us/case")
    print(f"invariants:   {checks_us:8.1f} us/case (judge {judge_us:.1f} - compare), both outcomes")
    print(f"loop:         {with_rate:8.0f} cases/s with the oracle ({with_findings} findings, {with_known} known-bug "
          f"cases counted), "
          f"{without_rate:.0f} without")
    case_us = 1e6 / with_rate
    print(f"cost:         the invariants are {100 * checks_us / case_us:.1f}% of a case in the loop "
          f"({case_us:.0f} us); the loop runs at {100 * with_rate / without_rate:.0f}% of its rate without them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
