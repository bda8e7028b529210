"""The command line: exit codes, one-line errors (never a traceback), and the reproduce view."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from diffuzz.cli import doctor, reproduce_view
from diffuzz.cli.commands import main
from diffuzz.contract.case import Case, Close, Invocation, MapEntry, PushData, Recv, Redirect, Send, SendMsg, Shutdown
from diffuzz.contract.outcome import Data, Endpoint, EventResult, Outcome, Run, RunContext, StepRecord
from diffuzz.engine.compare import compare

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "corpus" / "seeds" / "W01_plain_pass.json"

GOOD = {"format": 1, "events": [{"op": "send", "ep": "c0", "len": 3}]}
BAD_SENDMSG = {"op": "sendmsg", "ep": "c0", "iov": [1, "2"]}


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def test_help_lists_the_commands() -> None:
    code, out, _ = _invoke("--help")
    assert code == 0
    for command in ("run", "reproduce", "doctor"):
        assert f"  {command} " in out
    if importlib.util.find_spec("diffuzz.cli.fuzz") is not None:
        assert "  fuzz " in out and "  minimize " in out


def test_bare_diffuzz_prints_help() -> None:
    code, out, _ = _invoke()
    assert code == 0 and "Commands:" in out


# Every kind of bad input: exit 2, one line on stderr naming the problem, nothing on stdout.
BAD_FILES = [
    ("missing.json", None, "missing.json: cannot read: No such file or directory"),
    ("text.json", "hello", "text.json: not valid JSON: Expecting value at line 1 column 1"),
    ("latin1.json", b'{"name": "\xe9"}', "latin1.json: not UTF-8 text"),
    ("unknown.json", '{"format": 1, "colour": 1}', "unknown.json: colour: unknown field"),
    ("type.json", '{"format": 1, "events": [{"op": "sendmsg", "ep": "c0", "iov": [1, "2"]}]}',
     "type.json: events[0].iov[1]: must be an integer, not a string"),
    ("range.json", '{"format": 1, "pairs": 99}', "range.json: pairs: must be in 1..8, got 99"),
    ("newer.json", '{"format": 7}', "newer.json: format: version 7 is newer than this diffuzz reads (1); "
                                    "upgrade diffuzz"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "deep.json: nested too deeply to be a case"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
@pytest.mark.parametrize("command", [("run", "--side", "model"), ("run", "--side", "kernel"), ("reproduce",)],
                         ids=["run-model", "run-kernel", "reproduce"])
def test_bad_case_file_is_one_line_and_exit_2(tmp_path: Path, name: str, content: str | bytes | None, message: str,
                                              command: tuple[str, ...]) -> None:
    path = str(tmp_path / name) if content is None else _write(tmp_path, name, content)
    code, out, err = _invoke(command[0], path, *command[1:])
    assert code == 2
    assert out == ""
    assert err == f"diffuzz: error: {tmp_path}/{message}\n"


def test_reproduce_reads_every_file_before_running_any(tmp_path: Path) -> None:
    # The good file would need the kernel; the bad one stops the command before anything runs.
    good = _write(tmp_path, "good.json", json.dumps(GOOD))
    code, out, err = _invoke("reproduce", good, str(tmp_path / "absent.json"))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "absent.json: cannot read" in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("run", "x.json", "--side", "model", "--bogus"), "No such option '--bogus'"),
        (("run", "x.json"), "Missing option '--side'"),
        (("run", "x.json", "--side", "both"), "Invalid value for '--side'"),
        (("run", "x.json", "--side", "kernel", "--backend", "jit"), "Invalid value for '--backend'"),
        (("reproduce",), "Missing argument 'CASES...'"),
        (("run", str(SEED), "--side", "model", "--kernel-profile", "6.18.44-v9"),
         "unknown kernel profile '6.18.44-v9'; known: 6.18.44-v657, 6.18.44-v1045"),
        (("doctor", "--kernel-profile", "x"), "unknown kernel profile 'x'"),
        (("run", str(SEED), "--side", "kernel", "--kernel", "vm:9.9"), "use host or one of vm:6.1, vm:6.12, vm:7.2"),
        (("run", str(SEED), "--side", "kernel", "--kernel", "vm:6.12", "--backend", "bcc"),
         "--backend bcc runs on the host kernel only"),
        (("matrix", str(SEED), "--kernels", "host,bogus"), "kernel 'bogus': use host or one of"),
        (("kernels", "fetch", "9.9"), "unknown VM kernel '9.9'; known: 6.1, 6.12, 7.2"),
        (("fly",), "No such command 'fly'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    code, out, err = _invoke(*args)
    assert code == 2 and out == ""
    assert err.startswith("diffuzz: error: ") and err.count("\n") == 1
    assert fragment in err


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("diffuzz")
    return [str(script)] if script.exists() else [sys.executable, "-m", "diffuzz.cli.commands"]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("run", "{bad}", "--side", "kernel"), "events[0].iov[1]: must be an integer, not a string"),
        (("reproduce", "{missing}"), "cannot read: No such file or directory"),
        (("run", "{good}", "--side", "model", "--nope"), "No such option '--nope'"),
    ],
)
def test_real_process_never_prints_a_traceback(tmp_path: Path, args: tuple[str, ...], expect: str) -> None:
    files = {
        "bad": _write(tmp_path, "bad.json", json.dumps({"format": 1, "events": [BAD_SENDMSG]})),
        "good": _write(tmp_path, "good.json", json.dumps(GOOD)),
        "missing": str(tmp_path / "missing.json"),
    }
    argv = [a.format(**files) for a in args]
    proc = subprocess.run([*_console_script(), *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("diffuzz: error: ")
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------
# Running real sides


def _model_available() -> bool:
    import sim

    return hasattr(sim, "run")


@pytest.mark.skipif(not _model_available(), reason="the model (sim.run) is not written yet")
def test_run_model_side_prints_outcome_json() -> None:
    code, out, err = _invoke("run", str(SEED), "--side", "model", "--json", "--kernel-profile", "6.18.44-v1045")
    assert (code, err) == (0, "")
    outcome = json.loads(out)
    assert outcome["side"] == "model" and outcome["run_count"] >= 1
    assert outcome["notes"]["profile"] == "6.18.44-v1045"


@pytest.mark.kernel
def test_reproduce_names_the_probed_profile_and_forcing_the_other_differs() -> None:
    # W10 is where the two 6.18.44 profiles differ (stale_sk_redir): under the probed profile the
    # kernel agrees, under the other one the same case differs and the first line says "forced".
    w10 = str(SEED.with_name("W10_stale_redirect_apply.json"))
    code, out, _ = _invoke("reproduce", w10)
    first = out.splitlines()[0]
    assert code == 0 and first.startswith("diffuzz reproduce: kernel profile ") and "(probed: matches)" in first
    probed = first.split()[4]
    other = next(name for name in ("6.18.44-v657", "6.18.44-v1045") if name != probed)
    code, out, _ = _invoke("reproduce", "--json", "--kernel-profile", other, w10)
    record = json.loads(out)
    assert code == 1 and record["kernel_profile"] == other and not record["agree"]
    assert {d["path"] for d in record["differences"]} == {"endpoints.c1.rx", "endpoints.p0.rx"}


@pytest.mark.kernel
def test_doctor_names_the_kernel_profile_and_each_probe() -> None:
    _, out, _ = _invoke("doctor", "--json")
    check = next(c for c in json.loads(out) if c["name"] == "kernel profile")
    assert check["ok"], check
    assert "probed: matches" in check["detail"]
    assert "stale_redirect: kernel agrees with" in check["detail"] and "fionread: kernel agrees with" in check["detail"]


@pytest.mark.kernel(needs=("bcc",))
def test_run_kernel_side_bcc_prints_outcome_json() -> None:
    code, out, err = _invoke("run", str(SEED), "--side", "kernel", "--backend", "bcc", "--json")
    assert (code, err) == (0, "")
    outcome = json.loads(out)
    assert outcome["side"] == "kernel" and outcome["notes"]["backend"] == "bcc"
    assert outcome["run_count"] >= 1


@pytest.mark.kernel(needs=("bcc",))
def test_run_kernel_side_summary_names_each_observable() -> None:
    code, out, _ = _invoke("run", str(SEED), "--side", "kernel", "--backend", "bcc")
    assert code == 0
    assert "kernel side" in out and "run_count" in out and "p0 rx" in out


@pytest.mark.kernel
@pytest.mark.skipif(not _model_available(), reason="the model (sim.run) is not written yet")
def test_reproduce_exit_code_follows_compare() -> None:
    import sim
    from diffuzz.contract.case import load_case
    from kernel_runner import local

    case = load_case(str(SEED))
    differs = bool(compare(local.run(case), sim.run(case)))
    code, out, _ = _invoke("reproduce", str(SEED))
    assert code == (1 if differs else 0)
    assert ("DIFFER" if differs else "AGREE") in out


@pytest.mark.kernel
@pytest.mark.skipif(not _model_available(), reason="the model (sim.run) is not written yet")
def test_reproduce_several_cases_ends_with_a_summary() -> None:
    seeds = [str(SEED), str(SEED.with_name("W24a_basic_pop.json"))]
    code, out, err = _invoke("reproduce", *seeds)
    assert err == ""
    last = out.strip().splitlines()[-1]
    assert last.startswith("2 cases: ")
    assert code == (1 if "1 differ" in last or "2 differ" in last else 0)
    for line in (ln for ln in out.splitlines() if ln.startswith("AGREE: ")):
        assert line.endswith("run)") or line.endswith("runs)")


def test_doctor_exit_code_is_the_main_job_verdict() -> None:
    code, out, _ = _invoke("doctor", "--json")
    checks = json.loads(out)
    assert {c["name"] for c in checks} >= {"root / capabilities", "bpf() syscall", "sockmap", "clang -target bpf",
                                           "bcc (confirmation backend)", "interpreter program built"}
    ready = all(c["ok"] for c in checks if c["required"])
    assert code == (0 if ready else 2)
    for c in checks:
        assert c["ok"] or c["fix"], f"{c['name']} is missing without a fix"


def test_doctor_and_the_kernel_marker_agree() -> None:
    # One place decides: the sockmap check in doctor is the same probe the kernel marker skips on.
    sockmap = next(c for c in doctor.run_checks() if c.name == "sockmap")
    assert sockmap.ok == (doctor.missing("bpf", "sockmap") is None)


# --------------------------------------------------------------------------------------
# The reproduce view, on outcomes built by hand


CASE = Case(
    pairs=2,
    inserts=(MapEntry(0, "c0"), MapEntry(1, "p1")),
    program=(Invocation(steps=(PushData(2, 3), Redirect(1, 1)), verdict="last_rc"), Invocation(verdict=0)),
    events=(Send("c0", 10, ("MSG_MORE",)), SendMsg("c0", (1, 2)), Recv("p1", 100, peek=True), Shutdown("c0"),
            Close("c1", rst=True)),
    name="push then redirect",
)
CTX = RunContext(family=2, local="c0", remote="p0", task=0)
KERNEL = Outcome(
    side="kernel", inserts=(0, 0),
    events=(EventResult(ret=10), EventResult(ret=3), EventResult(ret=13, data=Data(b"AB\x01\x02\x03CDEFGHIJ")),
            EventResult(ret=0), EventResult()),
    runs=(Run("c0", 10, 10, (StepRecord(0, 13), StepRecord(1, 13)), 13, 1, CTX),),
    run_count=2,
    endpoints={"c0": Endpoint(fionread=0), "p0": Endpoint(), "c1": Endpoint(end="closed"),
               "p1": Endpoint(rx=Data(b"AB\x01\x02\x03CDEFGHIJ"), fionread=13)},
    notes={"backend": "bcc"},
)
MODEL = Outcome(
    side="model", inserts=(0, 0),
    events=(EventResult(ret=10), EventResult(ret="EAGAIN"), EventResult(ret=13, data=Data.from_json(
        "4142??????434445464748494a")), EventResult(ret=0), EventResult()),
    runs=(Run("c0", 10, None, (StepRecord(0, None), StepRecord(1, None)), 13, 1, CTX),),
    run_count=2,
    endpoints={"c0": Endpoint(fionread=0), "p0": Endpoint(), "c1": Endpoint(end="closed"),
               "p1": Endpoint(rx=Data.from_json("4142??????434445464748494b"), fionread=13)},
)


def test_case_reads_as_the_calls_it_makes() -> None:
    lines = reproduce_view.case_lines("x.json", CASE)
    assert lines[0] == "Case x.json — push then redirect"
    assert "  inserts[1]: map[1] = p1" in lines
    assert "    run 0      push_data(start=2, len=3, flags=0); redirect(key=1, flags=BPF_F_INGRESS); return last_rc" \
        in lines
    assert "    run 1+     return DROP" in lines
    assert lines[-5:] == ["    [0] send(c0, 10, MSG_MORE)", "    [1] sendmsg(c0, iov=[1, 2])",
                          "    [2] recv(p1, 100, MSG_PEEK)", "    [3] shutdown(c0, SHUT_WR)", "    [4] close(c1, rst)"]


def _render(diffs: list) -> str:
    buf = io.StringIO()
    reproduce_view.print_reproduce(Console(file=buf, width=200, highlight=False), "x.json", CASE, KERNEL, MODEL,
                                   diffs)
    return buf.getvalue()


def test_side_by_side_marks_exactly_the_differing_rows() -> None:
    diffs = compare(KERNEL, MODEL)
    assert [d.path for d in diffs] == ["events[1].ret", "endpoints.p1.rx"]
    text = _render(diffs)
    marked = [line for line in text.splitlines() if line.startswith("│ ≠")]
    assert len(marked) == 2
    assert "[1] sendmsg(c0, iov=[1, 2])" in marked[0] and "EAGAIN" in marked[0]
    assert "p1 rx" in marked[1]
    # The wildcard bytes matched on events[2]: that row is not marked, and shows them as "?".
    assert '"AB???CDEFGHIJ" (13 B)' in text
    assert "DIFFER: x.json: 2 differences" in text
    assert "endpoints.p1.rx: kernel 13 B, model 13 B, first difference at byte 12: kernel \"J\" (1 B) ≠ model " \
           "\"K\" (1 B)" in text
    assert "events[1].ret: kernel 3 ≠ model 'EAGAIN'" in text
    assert "kernel notes (not compared): backend=bcc" in text


def test_agreeing_outcomes_say_agree() -> None:
    text = _render([])
    assert "AGREE: x.json" in text and "≠" not in text


def test_rows_missing_on_one_side_are_marked() -> None:
    short = Outcome(side="model", inserts=(0, 0), events=KERNEL.events[:3], runs=KERNEL.runs, run_count=2,
                    endpoints=KERNEL.endpoints)
    diffs = compare(KERNEL, short)
    buf = io.StringIO()
    reproduce_view.print_reproduce(Console(file=buf, width=200), "x.json", CASE, KERNEL, short, diffs)
    marked = [line for line in buf.getvalue().splitlines() if line.startswith("│ ≠")]
    assert [("shutdown" in m, "close" in m) for m in marked] == [(True, False), (False, True)]
    assert all("—" in m for m in marked)


def test_show_data_escapes_what_is_not_plain_text() -> None:
    assert reproduce_view.show_data(Data(b'A?\\"\x00')) == '"A\\x3f\\x5c\\x22\\x00" (5 B)'
    assert reproduce_view.show_data(Data.from_json("41??")) == '"A?" (2 B)'
    assert reproduce_view.show_data(Data(b"x" * 60), limit=4) == '"xxxx…" (60 B)'
    assert reproduce_view.show_data(None) == "-"


def test_first_mismatch_skips_wildcards() -> None:
    assert reproduce_view.first_mismatch(Data(b"ABCD"), Data.from_json("41????45")) == 3
    assert reproduce_view.first_mismatch(Data(b"ABCD"), Data.from_json("41????44")) is None
    assert reproduce_view.first_mismatch(Data(b"ABCD"), Data(b"AB")) == 2


def test_interp_probe_wants_an_object_newer_than_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(doctor, "BPF_DIR", tmp_path)
    assert doctor.probe_interp() == "bpf/ has no sources yet"
    src = tmp_path / "interp.bpf.c"
    src.write_text("/* */")
    assert doctor.probe_interp() == "no compiled BPF object in bpf/"
    (tmp_path / "build").mkdir()
    obj = tmp_path / "build" / "interp.bpf.o"
    obj.write_bytes(b"\x7fELF")
    os.utime(obj, (1, 1))
    assert doctor.probe_interp() == "interp.bpf.o older than its sources"
    os.utime(src, (1, 1))
    os.utime(obj, None)
    assert doctor.probe_interp() is None


# ---- diffuzz generate ----------------------------------------------------------------------------


def test_generate_writes_the_cases_a_campaign_with_that_seed_runs_first(tmp_path: Path) -> None:
    from diffuzz.contract.case import load_case
    from diffuzz.engine.fuzz_config import FuzzConfig
    from diffuzz.engine.generate import random_case

    result = CliRunner().invoke(main, ["generate", "--seed", "7", "--count", "40", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").glob("*.json"))
    assert len(files) == 40 and not list((tmp_path / "out").glob("*.tmp*"))
    gen = FuzzConfig(seed=7).gen  # what the campaign's loop draws from (engine/loop.py source)
    cases = [load_case(str(tmp_path / "out" / f"seed7-case{i}.json")) for i in range(40)]
    assert cases == [random_case(7, i, gen) for i in range(40)]
    # The layouts mix (issue 12): some cases name sender threads, some give each send its own.
    assert any(c.shared_threads for c in cases) and any(not c.shared_threads for c in cases)
    assert "sender threads: own" in result.output


def test_generate_refuses_a_file_as_its_directory(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    result = CliRunner().invoke(main, ["generate", "--seed", "1", "--count", "2", "-o", str(f)])
    assert result.exit_code == 2 and "is a file" in result.output
