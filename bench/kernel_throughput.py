"""Kernel-side throughput: cases per second for the standard mix, on one worker and on all cores.

    .venv/bin/python bench/kernel_throughput.py [--cases 3000] [--fresh-thread] [--backend interp]
                                                [--no-pin] [--profile]

The standard mix: 2 loopback pairs, all four endpoints in a sockmap; a program of 1-4 step
lists with 1-4 steps each (apply, cork, pull, push, pop, redirect; small sane arguments, so
no case grows without end); 5 sends of 1-4000 bytes from random endpoints.  Cases come from
a seeded generator, so two runs measure the same work.

The report gives the machine, the kernel, the load average (other work on the machine
skews every number), cases/s through the full path (pool -> pipe -> worker -> kernel ->
back), and the worker's own time per case (notes["elapsed_us"]).  --profile also runs the
cases inside this process (in a private network namespace, in a child) under cProfile and
prints where the worker's time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffuzz.contract.case import (
    BPF_F_INGRESS,
    SK_DROP,
    SK_PASS,
    ApplyBytes,
    Case,
    CorkBytes,
    Invocation,
    MapEntry,
    PopData,
    PullData,
    PushData,
    Redirect,
    Send,
    Step,
)
from kernel_runner.backend import KernelUnsupported
from kernel_runner.pool import KernelPool, is_error

ENDPOINTS = ("c0", "p0", "c1", "p1")


def random_step(rng: random.Random, allow_push: bool) -> Step:
    kind = rng.choice(("apply", "cork", "pull", "push", "pop", "redirect") if allow_push
                      else ("apply", "cork", "pull", "pop", "redirect"))
    if kind == "apply":
        return ApplyBytes(rng.randint(1, 3000))
    if kind == "cork":
        return CorkBytes(rng.randint(1, 3000))
    if kind == "pull":
        return PullData(rng.randint(0, 100), rng.randint(100, 4000))
    if kind == "push":
        return PushData(rng.randint(0, 100), rng.randint(1, 64))
    if kind == "pop":
        return PopData(rng.randint(0, 100), rng.randint(1, 64))
    return Redirect(rng.randrange(4), rng.choice((0, BPF_F_INGRESS)))


def standard_case(rng: random.Random, fresh_thread: bool) -> Case:
    # apply_bytes with push_data can grow a message on every re-run (a hang, not throughput).
    allow_push = rng.random() < 0.5
    program = []
    for _ in range(rng.randint(1, 4)):
        steps = [random_step(rng, allow_push) for _ in range(rng.randint(1, 4))]
        if allow_push:
            steps = [s for s in steps if not isinstance(s, ApplyBytes)]
        program.append(Invocation(tuple(steps), rng.choice((SK_PASS, SK_PASS, SK_PASS, SK_DROP))))
    sends = tuple(Send(rng.choice(ENDPOINTS), rng.randint(1, 4000), ("MSG_DONTWAIT",)) for _ in range(5))
    return Case(pairs=2, inserts=tuple(MapEntry(k, ep) for k, ep in enumerate(ENDPOINTS)), program=tuple(program),
                events=sends, fresh_thread=fresh_thread)


def standard_mix(n: int, fresh_thread: bool, seed: int = 1) -> Iterator[Case]:
    rng = random.Random(seed)
    return (standard_case(rng, fresh_thread) for _ in range(n))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}"


def measure(jobs: int, args: argparse.Namespace) -> None:
    with KernelPool(jobs=jobs, backend=args.backend, deadline=10.0, pin=not args.no_pin) as pool:
        list(pool.imap(standard_mix(200, args.fresh_thread, seed=99)))  # warm-up: caches, first page frags
        start = time.perf_counter()
        outs = list(pool.imap(standard_mix(args.cases, args.fresh_thread)))
        wall = time.perf_counter() - start
    bad = sum(1 for o in outs if is_error(o) or o.hang)
    worker_us = [o.notes["elapsed_us"] for o in outs if "elapsed_us" in o.notes]
    print(f"  {jobs} worker(s): {len(outs) / wall:8.0f} cases/s   ({len(outs)} cases in {wall:.2f} s; "
          f"worker time per case median {statistics.median(worker_us):.0f} us, "
          f"mean {statistics.mean(worker_us):.0f} us; {bad} hang/error outcomes)")


def profile(args: argparse.Namespace) -> None:
    """cProfile of the executor itself, in a forked child inside its own network namespace."""
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        if status:
            print("  (profile child failed)")
        return
    try:
        from kernel_runner.executor import Executor
        from kernel_runner.netns import enter_new_netns
        from kernel_runner.send_thread import block_sigpipe
        from kernel_runner.worker import load_backend

        block_sigpipe()
        enter_new_netns()
        if not args.no_pin:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        executor = Executor(load_backend(args.backend))
        cases = list(standard_mix(args.cases, args.fresh_thread))
        for case in cases[:200]:
            executor.run(case)
        prof = cProfile.Profile()
        prof.enable()
        for case in cases:
            executor.run(case)
        prof.disable()
        print("\nWhere a worker's time goes (cProfile, executor only, sorted by own time):")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(18)
    finally:
        os._exit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--fresh-thread", action="store_true", help="issue every send from a new thread")
    parser.add_argument("--backend", default="interp")
    parser.add_argument("--no-pin", action="store_true", help="do not pin workers to CPUs")
    parser.add_argument("--profile", action="store_true", help="also profile the executor in-process")
    args = parser.parse_args()
    print(f"diffuzz kernel throughput - {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"  machine: {machine()}")
    print(f"  kernel:  {platform.system()} {os.uname().release}")
    print(f"  load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  mix: 2 pairs, 1-4 step lists of 1-4 steps, 5 sends of 1-4000 bytes (MSG_DONTWAIT), "
          f"fresh_thread={args.fresh_thread}, backend={args.backend}, pinned={not args.no_pin}")
    try:
        measure(1, args)
        cores = len(os.sched_getaffinity(0))
        if cores > 1:
            measure(cores, args)
    except KernelUnsupported as e:
        print(f"kernel_throughput: {e}", file=sys.stderr)
        return 2
    if args.profile:
        profile(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
