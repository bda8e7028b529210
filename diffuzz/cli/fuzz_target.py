"""libFuzzer-compatible entry point (atheris): bytes -> Case -> model and kernel -> compare.

    python -m diffuzz.cli.fuzz_target [--model-only] [corpus dirs] [-max_total_time=N] [-runs=N]
                                  [-artifact_prefix=DIR/] [other libFuzzer flags]

Every input is decoded by the same generator as the random engine, through the byte-driven
chooser (diffuzz.engine.choice.BytesChooser), so libFuzzer's mutations of the bytes are mutations of
the case and any byte string is a valid case.

Coverage feedback.  The model is NOT instrumented (that would make it slower than the kernel).
Instead the feature signal of diffuzz.engine.features (helper/state combinations the case reached) is
fed to libFuzzer as coverage counters: at start-up we reserve COUNTERS counters with
`atheris._reserve_counter()` and, per input, hit counter `feature_id % COUNTERS` with
`atheris._trace_branch(counter)`.  These are the two calls atheris' own bytecode
instrumentation emits; atheris 3.0 has no public custom-coverage API, so if they ever disappear
we fall back to `atheris.instrument_func` on a generated dispatcher with one code site per
counter (DISPATCH_BITS deep decision tree), which libFuzzer sees as ordinary Python branches.
DIFFUZZ_ATHERIS_COVERAGE=dispatch forces the fallback (to test it).

Modes.  By default the case also runs on the kernel (kernel_runner.pool.KernelPool, one
worker, created at start, which also probes the kernel's behaviour profile for the model;
DIFFUZZ_KERNEL_PROFILE=NAME forces one; needs root and BPF).  `--model-only` (or
DIFFUZZ_MODEL_ONLY=1) runs only the model: coverage-guided search for model crashes, usable
without root.  A model exception is a crash like any other: libFuzzer saves the input.

A difference that reproduces on a second kernel run is saved through diffuzz.engine.corpus under
$DIFFUZZ_CORPUS (default ./runs/default, like `diffuzz fuzz`) and then raised as DifferenceFound, so libFuzzer writes a
crash artifact (artifact_prefix) and stops, as ClusterFuzzLite expects.  A difference that does
not reproduce is counted as flaky and printed once per signature.

In-process engine (`diffuzz fuzz --engine atheris`, `run_engine` below): the same libFuzzer loop
drives diffuzz.engine.loop.Engine.one_case instead, so a case takes the engine's whole path (confirm,
minimize, save, campaign state and coverage) and a finding does not stop the run.  libFuzzer
ends a process with C exit(), which skips Python's clean-up, so the loop ends itself: when the
engine is done (limit, SIGTERM/SIGINT) the callback runs `finish` and leaves with os._exit(0).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from diffuzz.contract.case import Case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.features import features

COUNTERS = 1 << 14
DISPATCH_BITS = 10


class DifferenceFound(AssertionError):
    """Kernel and model disagree on this input, reproducibly (the libFuzzer crash)."""


# ---- coverage feedback ------------------------------------------------------------------------


def coverage_hook(atheris: Any, mode: str | None = None) -> tuple[str, Callable[[Iterable[int]], None]]:
    """(mechanism name, hit(feature_ids)).  Call before atheris.Fuzz() so the counters exist
    when libFuzzer maps them."""
    mode = mode or os.environ.get("DIFFUZZ_ATHERIS_COVERAGE", "counters")
    if mode == "counters" and hasattr(atheris, "_reserve_counter") and hasattr(atheris, "_trace_branch"):
        counters = [atheris._reserve_counter() for _ in range(COUNTERS)]

        def hit(ids: Iterable[int]) -> None:
            # Look the function up on every call, never bind it early: atheris.Setup() swaps
            # the native core (a stub before, the libFuzzer-linked one after), and a reference
            # taken before Setup silently feeds nothing (measured: cov stays absent).
            trace = atheris._trace_branch
            for fid in ids:
                trace(counters[fid % COUNTERS])

        return "counters", hit
    dispatch = atheris.instrument_func(_make_dispatcher(DISPATCH_BITS))
    mask = (1 << DISPATCH_BITS) - 1

    def hit_dispatch(ids: Iterable[int]) -> None:
        for fid in ids:
            dispatch(fid & mask)

    return "dispatch", hit_dispatch


def _make_dispatcher(bits: int) -> Callable[[int], None]:
    """A function whose 2**bits leaves are distinct code sites: x picks one by its bits."""
    lines = ["def _dispatch(x):"]

    def tree(depth: int, indent: str) -> None:
        if depth == bits:
            lines.append(f"{indent}return None")
            return
        lines.append(f"{indent}if x & {1 << depth}:")
        tree(depth + 1, indent + "    ")
        lines.append(f"{indent}else:")
        tree(depth + 1, indent + "    ")

    tree(0, "    ")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<diffuzz-feature-dispatch>", "exec"), namespace)  # generated above, no input
    return namespace["_dispatch"]


# ---- the target -------------------------------------------------------------------------------


class Target:
    """TestOneInput and what it keeps between inputs (the kernel pool, flaky signatures)."""

    def __init__(self, hit: Callable[[Iterable[int]], None], model_only: bool, corpus_root: str) -> None:
        from diffuzz.engine.choice import BytesChooser
        from diffuzz.engine.generate import generate

        self._decode: Callable[[bytes], Case] = lambda data: generate(BytesChooser(data))
        self._hit = hit
        self.model_only = model_only
        self.corpus_root = corpus_root
        self._pool: Any = None
        if not model_only:
            from kernel_runner.pool import KernelPool

            self._pool = KernelPool(jobs=1)
        self._model = _load_model(self._pool)
        self._flaky: set[frozenset[str]] = set()
        self._errors = 0

    def __call__(self, data: bytes) -> None:
        case = self._decode(data)
        model = self._model(case)
        self._hit(features(case, model))
        if not self.model_only:
            self._check_kernel(case, model)

    def _check_kernel(self, case: Case, model: Outcome) -> None:
        from diffuzz.engine.confirm import rerun
        from diffuzz.engine.oracle import judge
        from kernel_runner.pool import is_error

        kernel = self._pool.run(case)
        if is_error(kernel):
            self._errors += 1
            if self._errors <= 3:
                print(f"diffuzz: kernel run failed, input skipped: {kernel.notes.get('error')}", file=sys.stderr)
            return
        verdict = judge(case, kernel, model)
        if not verdict.kinds:
            return
        kinds = verdict.kinds
        again = rerun(case, kinds, self._pool, self._model)
        if not again.reproduced:
            if kinds not in self._flaky:
                self._flaky.add(kinds)
                print(f"diffuzz: flaky difference (did not reproduce): {sorted(kinds)}", file=sys.stderr)
            return
        where = self._save(case, again.kernel, again.model, again.differences, kinds)
        first = again.differences[0]
        raise DifferenceFound(f"{first.path}: kernel {first.kernel!r} != model {first.model!r} "
                              f"({len(again.differences)} differences; saved in {where})")

    def _save(self, case: Case, kernel: Outcome, model: Outcome, diffs: tuple, kinds: frozenset[str]) -> str:
        try:
            from diffuzz.engine.corpus import Corpus, Finding
            from diffuzz.engine.signature import Signature, root_kind

            sig = Signature.of(kinds, case, os.uname().release, root_kind(diffs, kernel, model, case))
            rec = Corpus(self.corpus_root).record(Finding(case, kernel, model, diffs, sig,
                                                          notes={"engine": "atheris", "minimized": False}))
            return str(rec.bucket)
        except (ImportError, OSError) as e:
            return f"nowhere ({e}); the libFuzzer artifact is the reproducer"


def run_engine(engine: Any, corpus_dir: str, finish: Callable[[Any], None]) -> Any:
    """Run `engine` (diffuzz.engine.loop.Engine, kernel pool and campaign attached) under libFuzzer.
    Never returns: `finish(stats)` then os._exit(0) when the engine is done."""
    import atheris

    from diffuzz.engine.choice import BytesChooser
    from diffuzz.engine.generate import generate

    os.makedirs(corpus_dir, exist_ok=True)
    _mechanism, hit = coverage_hook(atheris)

    def one(data: bytes) -> None:
        if engine.done():
            finish(engine.stats)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        case = generate(BytesChooser(data), engine.cfg.gen)
        model = engine.one_case(case)
        if model is not None:
            hit(features(case, model))

    # SIGINT/SIGTERM stay with Python (the CLI's handler sets engine.stop), so a stop is clean;
    # libFuzzer's own limits are off, the engine's --duration/--cases decide.
    # -len_control=0: full-length inputs from the start; short ones decode to near-empty cases
    # (measured: 41 features after 15 s with length control, 124 without).
    argv = [sys.argv[0], corpus_dir, "-handle_int=0", "-handle_term=0", "-max_len=4096", "-len_control=0",
            "-print_final_stats=0", "-verbosity=0"]
    atheris.Setup(argv, one)
    atheris.Fuzz()
    finish(engine.stats)  # not reached with libFuzzer; kept for a fuzzer that does return
    os._exit(0)


def _load_model(pool: Any) -> Callable[[Case], Outcome]:
    """The model under DIFFUZZ_KERNEL_PROFILE, else under the profile the kernel's probes choose
    (through `pool`; the reference profile when fuzzing the model alone)."""
    import click

    from diffuzz.cli.common import choose_profile, model_runner

    try:
        choice = choose_profile(os.environ.get("DIFFUZZ_KERNEL_PROFILE") or None,
                                pool.run if pool is not None else None)
        print(f"diffuzz.cli.fuzz_target: {choice.line()}", file=sys.stderr)
        return model_runner(choice)
    except click.ClickException as e:
        raise SystemExit(f"diffuzz.cli.fuzz_target: {e.format_message()}") from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    model_only = os.environ.get("DIFFUZZ_MODEL_ONLY", "") not in ("", "0")
    if "--model-only" in argv:
        argv.remove("--model-only")  # ours, not libFuzzer's
        model_only = True
        os.environ["DIFFUZZ_MODEL_ONLY"] = "1"  # -fork/-jobs children get libFuzzer's flags only
    try:
        import atheris
    except ImportError:
        raise SystemExit("diffuzz.cli.fuzz_target needs atheris: pip install atheris") from None
    mechanism, hit = coverage_hook(atheris)
    target = Target(hit, model_only, os.environ.get("DIFFUZZ_CORPUS", "runs/default"))
    print(f"diffuzz.cli.fuzz_target: {'model only' if model_only else 'kernel vs model'}, "
          f"feature coverage via {mechanism}", file=sys.stderr)
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
