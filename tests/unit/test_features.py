"""features(): deterministic, and it tells apart the situations the spec cares about.

The Outcomes are written by hand from the spec's worked examples (W3, W4, W12 ...), so these
tests do not depend on the model; each pairs a case with a near twin that must differ.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffuzz.contract.case import (
    ApplyBytes,
    Case,
    CorkBytes,
    Fionread,
    Invocation,
    MapEntry,
    PopData,
    PushData,
    Recv,
    Redirect,
    Send,
)
from diffuzz.contract.outcome import Data, Endpoint, EventResult, Outcome, Run, RunContext, StepRecord
from diffuzz.engine.features import feature_id, feature_names, features

ROOT = Path(__file__).parents[2]
MAPPED = (MapEntry(0, "c0"), MapEntry(1, "p0"))


def run(ep: str, size: int, task: int, rcs: tuple[int, ...] = (), verdict: int = 1, size_out: int | None = None) -> Run:
    return Run(ep=ep, size_in=size, win_in=None, steps=tuple(StepRecord(rc, None) for rc in rcs),
               size_out=size if size_out is None else size_out, verdict=verdict,
               ctx=RunContext(family=2, local=ep, remote="p0" if ep == "c0" else "c0", task=task))


def outcome(events: tuple, runs: tuple[Run, ...] = (), run_count: int | None = None, **eps: Endpoint) -> Outcome:
    return Outcome(side="model", inserts=(0, 0), events=tuple(EventResult(ret=r) if not isinstance(r, EventResult)
                                                               else r for r in events),
                   runs=runs, run_count=len(runs) if run_count is None else run_count,
                   endpoints=eps or {"c0": Endpoint(), "p0": Endpoint()})


def case(*invs: Invocation, events: tuple = (Send("c0", 10),)) -> Case:
    return Case(inserts=MAPPED, program=invs or (Invocation(),), events=events)


def test_same_input_same_features_across_processes() -> None:
    c = case(Invocation((PushData(0, 4),)))
    o = outcome((14,), (run("c0", 10, 0, (0,), size_out=14),))
    here = sorted(features(c, o))
    code = (
        "from diffuzz.engine.features import feature_id;"
        "print(feature_id('h:0:0:push_data:ok'), feature_id('send:send:full'))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123"}).stdout.split()
    assert [int(x) for x in there] == [feature_id("h:0:0:push_data:ok"), feature_id("send:send:full")]
    assert here == sorted(features(c, o))
    assert feature_id("h:0:0:push_data:ok") in here


def test_helper_return_classes_are_per_position() -> None:
    c = case(Invocation((PopData(0, 3), PopData(100, 1))))
    ok_einval = feature_names(c, outcome((10,), (run("c0", 10, 0, (0, -22), size_out=7),)))
    assert {"h:0:0:pop_data:ok", "h:0:1:pop_data:EINVAL", "sz:shrank"} <= ok_einval
    enomem = feature_names(c, outcome((10,), (run("c0", 10, 0, (-12, -22)),)))
    assert "h:0:0:pop_data:ENOMEM" in enomem and "h:0:0:pop_data:ok" not in enomem


def test_redirect_self_peer_miss_and_ingress() -> None:
    to_self = feature_names(case(Invocation((Redirect(0),), "last_rc")), outcome((10,), (run("c0", 10, 0, (1,)),)))
    to_peer_in = feature_names(case(Invocation((Redirect(1, 1),), "last_rc")),
                               outcome((10,), (run("c0", 10, 0, (1,)),)))
    miss = feature_names(case(Invocation((Redirect(7),), "last_rc")),
                         outcome(("EACCES",), (run("c0", 10, 0, (0,), verdict=0),)))
    assert "redir:self" in to_self and "redir:peer:in" not in to_self
    assert "redir:peer:in" in to_peer_in
    assert "h:0:0:redirect:miss" in miss and "send:send:EACCES" in miss and "v:D" in miss


def test_everything_popped_then_redirected() -> None:
    c = case(Invocation((PopData(0, 10), Redirect(1)), "last_rc"))
    popped = feature_names(c, outcome((10,), (run("c0", 10, 0, (0, 1), size_out=0),)))
    kept = feature_names(c, outcome((10,), (run("c0", 10, 0, (-22, 1)),)))
    assert "popall_redir" in popped and "popall_redir" not in kept


def test_sticky_drop_apply_span_and_cork_are_told_apart() -> None:
    sends = (Send("c0", 10), Send("c0", 10))
    # W3: DROP is sticky, the second send runs nothing and fails with EACCES.
    sticky = feature_names(case(Invocation((), 0), events=sends),
                           outcome(("EACCES", "EACCES"), (run("c0", 10, 0, verdict=0),)))
    # apply(15): the second send is still inside the first run's window.
    span = feature_names(case(Invocation((ApplyBytes(15),)), events=sends),
                         outcome((10, 10), (run("c0", 10, 0, (0,)), run("c0", 10, 1, (0,)))))
    span_norun = feature_names(case(Invocation((ApplyBytes(15),)), events=sends),
                               outcome((10, 10), (run("c0", 10, 0, (0,)),)))
    cork = feature_names(case(Invocation((CorkBytes(20),)), events=sends),
                         outcome((10, 10), (run("c0", 10, 0, (0,)),)))
    assert "norun:sticky_drop" in sticky
    assert "norun:apply_span" in span_norun and "norun:apply_span" not in span
    assert "norun:cork" in cork and "norun:sticky_drop" not in cork


def test_cork_flushed_by_drop() -> None:
    sends = (Send("c0", 5), Send("c0", 5))
    c = case(Invocation((CorkBytes(10),)), Invocation((), 0), events=sends)
    drop = feature_names(c, outcome((5, 5), (run("c0", 5, 0, (0,)), run("c0", 10, 1, verdict=0))))
    passed = feature_names(case(Invocation((CorkBytes(10),)), Invocation(), events=sends),
                           outcome((5, 5), (run("c0", 5, 0, (0,)), run("c0", 10, 1))))
    assert {"cork_flush", "cork_drop"} <= drop
    assert "cork_flush" in passed and "cork_drop" not in passed


def test_epipe_from_redirect_versus_plain_epipe() -> None:
    redir = feature_names(case(Invocation((Redirect(1),), "last_rc")),
                          outcome((EventResult("EPIPE", sigpipe=True),), (run("c0", 10, 0, (1,)),)))
    plain = feature_names(case(), outcome((EventResult("EPIPE", sigpipe=True),), (run("c0", 10, 0),)))
    assert {"epipe_redir", "sigpipe", "send:send:EPIPE"} <= redir
    assert "epipe_redir" not in plain and "send:send:EPIPE" in plain


def test_ingress_read_after_tcp_data() -> None:
    # W12-like: c0 PASSes to p0 (TCP), then redirects to p0's ingress queue; p0 reads both.
    events = (Send("c0", 5), Send("c0", 5), Recv("p0", 100))
    c = case(Invocation(), Invocation((Redirect(1, 1),), "last_rc"), events=events)
    o = outcome((5, 5, EventResult(10, data=Data(b"x" * 10))), (run("c0", 5, 0), run("c0", 5, 1, (1,))))
    early = case(Invocation((Redirect(1, 1),), "last_rc"), Invocation(), events=events)
    assert "ingress_tcp:late" in feature_names(c, o)
    o_early = outcome((5, 5, EventResult(10, data=Data(b"x" * 10))), (run("c0", 5, 0, (1,)), run("c0", 5, 1)))
    assert "ingress_tcp:early" in feature_names(early, o_early)
    assert "ingress_tcp:late" not in feature_names(early, o_early)
    only_tcp = feature_names(case(events=events), outcome((5, 5, 10), (run("c0", 5, 0), run("c0", 5, 1))))
    assert not any(n.startswith("ingress_tcp") for n in only_tcp)


def test_send_classes_run_buckets_and_end_state() -> None:
    events = (Send("c0", 10), Fionread("p0"), Recv("p0", 4))
    o = outcome((6, 6, EventResult(0, data=Data(b""))), (run("c0", 10, 0),), run_count=100,
                c0=Endpoint(), p0=Endpoint(rx=Data(b"ab??", ((2, 4),)), fionread=2, end="EOF"))
    names = feature_names(case(events=events), o)
    assert {"send:send:partial", "rc:64", "rc:overflow", "fionread", "eof", "unknown", "end:EOF"} <= names
    full = feature_names(case(events=(Send("c0", 10),)), outcome((10,), (run("c0", 10, 0),)))
    assert {"send:send:full", "rc:1"} <= full and not {"fionread", "eof", "unknown"} & full


def test_verdict_sequences_are_folded_and_bounded() -> None:
    sends = tuple(Send("c0", 1) for _ in range(6))
    c = case(Invocation(), Invocation((), 0), Invocation(), events=sends)
    runs = tuple(run("c0", 1, i, verdict=v) for i, v in enumerate((1, 0, 1, 1, 1, 1)))
    assert "v:PDP" in feature_names(c, outcome((1, "EACCES", 1, 1, 1, 1), runs))


def test_hang_is_its_own_feature() -> None:
    assert feature_names(case(), Outcome(side="kernel", hang=True)) == {"hang"}


# ---- the atheris entry: features reach libFuzzer as coverage ---------------------------------


COVERAGE_PROBE = """
import sys, atheris
from diffuzz.cli import fuzz_target
mechanism, hit = fuzz_target.coverage_hook(atheris, sys.argv.pop(1))
def one(data):
    hit(b * 7919 + i for i, b in enumerate(data[:4]))
atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


def _libfuzzer_cov(lines: str, stage: str) -> int:
    found = re.findall(rf"{stage}\s+cov: (\d+)", lines)
    return int(found[-1]) if found else 0


@pytest.mark.parametrize("mechanism", ["counters", "dispatch"])
def test_feature_ids_become_libfuzzer_coverage(mechanism: str) -> None:
    pytest.importorskip("atheris")
    proc = subprocess.run([sys.executable, "-c", COVERAGE_PROBE, mechanism, "-runs=400", "-seed=1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "DONE" in proc.stderr, proc.stderr[-2000:]
    # More distinct feature ids, more coverage: libFuzzer keeps inputs for them.
    assert _libfuzzer_cov(proc.stderr, "DONE") > _libfuzzer_cov(proc.stderr, "INITED") + 20


def test_fuzz_target_model_only_runs() -> None:
    pytest.importorskip("atheris")
    import sim

    if not hasattr(sim, "run"):
        pytest.skip("sim.run (the model) does not exist yet")
    proc = subprocess.run([sys.executable, "-m", "diffuzz.cli.fuzz_target", "--model-only", "-runs=200", "-seed=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 200 runs" in proc.stderr and "model only" in proc.stderr
