"""Buckets per root cause: each planted model bug (tests/quality/test_planted_bugs.py), one campaign each.

    .venv/bin/python bench/planted_buckets.py [--cases 6000] [--seed 3] [--minimize-seconds 5]

The "kernel" is the model without the bug (FunctionPool), the model the one with it, so every
finding has the one planted cause.  The "kernel" copies the documented bugs K1-K5 as the model
does; where the planted bug sends the model another way, it no longer names them, and the
breach rides with the difference (oracle.documented).  Prints, per bug, the findings and the
buckets they went to, with each bucket's root, helpers, events and count (the known.* buckets of
the bugs the reference itself copies are left out).  Issue 13's goal: at most 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffuzz.engine.corpus import Corpus
from diffuzz.engine.function_pool import FunctionPool
from diffuzz.engine.loop import Engine, FuzzConfig
from tests.quality.test_planted_bugs import BUGS, _sim_run, buggy_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--minimize-seconds", type=float, default=5.0)
    args = ap.parse_args()
    for bug in BUGS:
        with tempfile.TemporaryDirectory() as d:
            corpus = Corpus(d)
            st = Engine(FuzzConfig(seed=args.seed, cases=args.cases, minimize_seconds=args.minimize_seconds),
                        FunctionPool(_sim_run()), buggy_model(bug), corpus).run()
            buckets = [b for b in corpus.buckets() if not b.name.startswith("known.")]
            print(f"{bug.name:22} {st.findings:5} findings in {args.cases} cases -> {len(buckets)} bucket(s)",
                  flush=True)
            for b in buckets:
                state = json.loads((b / "bucket.json").read_text())
                sig = state["signature"]
                print(f"  {state['count']:6}  {sig['root']:22} helpers {','.join(sig['helpers']) or '-':24} "
                      f"events {','.join(sig['events']) or '-'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
