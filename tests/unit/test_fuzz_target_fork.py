"""The libFuzzer entry as an executable: libFuzzer's -fork=N re-runs argv[0] for every job, so
`diffuzz-fuzz-target` (a console script) is what lets an atheris campaign use every core."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_fork_mode_runs_jobs_and_grows_the_corpus(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    script = shutil.which("diffuzz-fuzz-target", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . installs the diffuzz-fuzz-target console script"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = {**os.environ, "DIFFUZZ_CORPUS": str(tmp_path / "runs")}
    env.pop("DIFFUZZ_MODEL_ONLY", None)  # --model-only sets it for the jobs itself
    proc = subprocess.run([script, "--model-only", str(corpus), "-fork=2", "-max_total_time=4",
                           f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-fork=2: fuzzing in separate process" in proc.stderr
    assert "job: 2" in proc.stderr  # more than one job ran, each a fresh diffuzz-fuzz-target process
    assert any(corpus.iterdir()), "the jobs' new inputs are merged into the corpus directory"
    assert not list(tmp_path.glob("crash-*"))
