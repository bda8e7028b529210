"""Kernel bugs diffuzz found: corpus/kernel-bugs/*.json.

Each file is a Case whose meta.expected states the buggy behaviour measured on the release in
meta.kernel.  The model follows the kernel's logic, so it shows the same behaviour; these cases
keep the bug visible to people (docs/kernel-notes.md) and tell us when a kernel fixes it:
- on the kernel: the bug still shows (check_expected finds nothing); on a kernel that no longer
  shows it, the test is skipped with a message naming both releases, so the fix is noticed;
- on the model: the same observables (the model mirrors the kernel's logic, bugs included).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffuzz.contract.case import Case, load_case
from diffuzz.engine.expect import check_expected

BUGS = sorted((Path(__file__).resolve().parents[2] / "corpus" / "kernel-bugs").glob("*.json"))


@pytest.fixture(params=BUGS, ids=lambda p: p.stem)
def bug(request: pytest.FixtureRequest) -> Case:
    return load_case(str(request.param))


def test_there_are_kernel_bug_cases() -> None:
    assert BUGS, "corpus/kernel-bugs/ is empty"


def test_model_mirrors_the_kernel_bug(bug: Case) -> None:
    import sim

    assert check_expected(bug, sim.run(bug)) == []


@pytest.mark.kernel
def test_kernel_still_shows_the_bug(bug: Case) -> None:
    from kernel_runner import local

    outcome = local.run(bug)
    assert "error" not in outcome.notes, outcome.notes
    mismatches = check_expected(bug, outcome)
    if mismatches and os.uname().release != bug.meta["kernel"]:
        pytest.skip(f"{bug.name}: recorded on {bug.meta['kernel']}, this kernel ({os.uname().release}) no longer "
                    f"shows it: {mismatches[0]}")
    assert mismatches == []


@pytest.mark.kernel
@pytest.mark.parametrize("path", BUGS, ids=lambda p: p.stem)
def test_reproduce_exits_1_naming_the_promise_the_bug_breaks(path: Path) -> None:
    # The second oracle: the kernel and the model agree (the model copies the bug), and still the
    # case is a finding, by the invariant the bug breaks (diffuzz/engine/invariants.py KNOWN_BUGS).
    import json

    from click.testing import CliRunner

    from diffuzz.cli.commands import main
    from diffuzz.engine.invariants import KNOWN_BUGS

    bug_id = path.stem.split("_")[0]
    result = CliRunner().invoke(main, ["reproduce", "--json", str(path)])
    record = json.loads(result.output)
    if record["differences"]:
        pytest.skip(f"{path.stem}: kernel and model differ on this kernel: {record['differences'][0]['path']}")
    assert result.exit_code == 1, result.output
    # A bug may break more than one promise (K4: bytes, or a send's return); each case shows one.
    assert set(KNOWN_BUGS[bug_id]) & {b["invariant"] for b in record["broken"]["kernel"]}
    assert record["broken"]["model"] == [] and record["broken"]["model_copies"] == [bug_id]
