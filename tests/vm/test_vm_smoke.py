"""The VM smoke test: boot one Debian kernel in qemu (the one `setup.sh --test` fetches), run the
seeds in it, and see a guest that panics become a crash outcome and a guest that stops answering
become a hang, each with the guest's console kept.  The rest of the matrix is a benchmark and a
documented run (docs/matrix.md), not a test: each VM costs a boot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffuzz.cli.doctor import SMOKE_KERNEL
from diffuzz.contract.case import Case, load_case
from diffuzz.contract.outcome import Outcome
from diffuzz.engine import matrix
from diffuzz.engine.probes import probe_and_choose
from kernel_runner.pool import KernelPool

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted((ROOT / "corpus" / "seeds").glob("*.json"))
KERNEL = f"vm:{SMOKE_KERNEL}"

pytestmark = [pytest.mark.kernel(needs=("vm",)), pytest.mark.slow]


def test_the_seeds_run_in_a_vm_under_the_kernels_own_profile() -> None:
    cases = [(str(p), load_case(p)) for p in SEEDS]
    with KernelPool(jobs=2, kernel=KERNEL) as pool:
        assert pool.kernel_release.startswith(SMOKE_KERNEL + ".")
        choice = probe_and_choose(pool.run)
        outcomes = list(pool.imap(c for _p, c in cases))
    # The probes, run inside the guest, pick that kernel's own profile, not the host's.
    assert choice.exact and choice.profile.name.startswith(SMOKE_KERNEL + "."), choice.how()
    assert all(o.notes["kernel"] == pool.kernel_release for o in outcomes)
    _column, cells = matrix.run_column(KERNEL, pool.kernel_release, choice, cases, outcomes)
    # W21 is kernel-only (TCP back-pressure the model does not compute): judged on the kernel's promises.
    bad = {Path(p).name: (c.status, c.detail) for (p, _c), c in zip(cases, cells, strict=True)
           if c.status not in (matrix.AGREE, matrix.KERNEL_ONLY)}
    assert not bad


def test_a_guest_kernel_panic_is_a_crash_with_its_console() -> None:
    case = load_case(SEEDS[0])
    with KernelPool(jobs=1, kernel=KERNEL, backend="kernel_runner.vm.selftest:Panic", pin=False) as pool:
        out = pool.run(case)
    assert "error" not in out.notes and not out.hang
    assert "guest kernel died" in out.notes["crash"]
    assert "sysrq" in out.notes["console"].lower() and "Kernel panic" in out.notes["console"]


def test_a_guest_that_stops_answering_is_a_hang_and_the_vm_is_replaced() -> None:
    case = load_case(SEEDS[0])
    with KernelPool(jobs=1, kernel=KERNEL, backend="kernel_runner.vm.selftest:Hang", deadline=0.5,
                    pin=False) as pool:
        first = pool.pids()
        out = pool.run(case)
        assert pool.pids() != first  # a fresh VM took its place
    assert out.hang and "no answer within 4 s" in out.notes["hang"]
    assert "diffuzz-init: worker on" in out.notes["console"]


def test_matrix_command_runs_host_and_vm_and_explains_the_split() -> None:
    # W12 reads FIONREAD with bytes on both queues: the host (6.18) and 6.12 count differently,
    # and each agrees with the model under its own profile.
    seed = str(ROOT / "corpus" / "seeds" / "W12_read_order_ingress_fionread.json")
    proc = subprocess.run([sys.executable, "-m", "diffuzz.cli.commands", "matrix", seed, "--kernels",
                           f"host,{KERNEL}", "--json", "--jobs", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    row = result["cases"][0]
    assert [c["status"] for c in row["cells"].values()] == ["agree", "agree"]
    assert row["groups"] == [["host"], [KERNEL]] and row["explained_by_profiles"]
    assert "fionread_tcp_inq" in row["split_by"]


def test_a_real_kernel_crash_k4_through_splice_is_caught_with_its_trace() -> None:
    # corpus/vm-only/: found by a VM campaign; 6.12.118 panics in splice_to_socket.  Never on the host.
    case = load_case(ROOT / "corpus" / "vm-only" / "K4_splice_after_cork_crashes_6_12.json")
    with KernelPool(jobs=1, kernel=KERNEL, pin=False) as pool:
        out = pool.run(case)
        after = pool.run(load_case(SEEDS[0]))  # the replacement VM runs the next case
    _skip_if_fixed(case, pool.kernel_release, out)
    assert "NULL pointer dereference" in out.notes["crash"]
    assert "splice_to_socket" in out.notes["console"]
    assert "error" not in after.notes and "crash" not in after.notes


def test_k5_the_send_loop_that_never_ends_exhausts_the_guest_and_is_a_crash() -> None:
    # corpus/vm-only/: the model says the send loop never ends (a hang, K5); 6.12.118 allocates
    # until the OOM killer takes the sender, which ends the guest.
    case = load_case(ROOT / "corpus" / "vm-only" / "K5_push_every_run_exhausts_memory_6_12.json")
    with KernelPool(jobs=1, kernel=KERNEL, pin=False) as pool:
        out = pool.run(case)
    _skip_if_fixed(case, pool.kernel_release, out)
    assert "oom-killer" in out.notes["crash"]
    assert "tcp_bpf_push" in out.notes["console"]


def _skip_if_fixed(case: Case, release: str, out: Outcome) -> None:
    """A newer Debian build of the kernel may have the fix: then say so, naming both builds (as
    tests/corpus/test_kernel_bugs.py does on the host), instead of failing."""
    recorded = str(case.meta.get("kernel", "")).split()[0]
    if "crash" not in out.notes and release != recorded:
        pytest.skip(f"{case.name} crashed {recorded}; {release} runs it without crashing (fixed?)")

