"""The findings corpus: one directory per difference signature, like syzkaller's crash dirs.

    corpus/findings/<slug>-<hash>/
        case.json     the minimized case (diffuzz.contract.case JSON)
        kernel.json   the kernel's Outcome for it
        model.json    the model's Outcome for it
        diff.txt      the case as a step list and every difference, for people
        finding.md    triage: status (new | model-fixed | kernel-bug | documented), count,
                      first/last seen, explanation.  People edit status and explanation.
        bucket.json   machine state: signature, count, first/last seen, releases, kernel profiles
                      (the model's, when found), status

Every file is written atomically (a temporary file in the same directory, fsync, rename, fsync
of the directory), and a new bucket is assembled in a hidden temporary directory and renamed
into place whole, so a writer killed at any moment leaves either no bucket or a complete one.
Meeting a known bucket again only rewrites bucket.json (count, last seen) and the two
matching lines of finding.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from diffuzz.contract.case import SEND_TYPES, Case
from diffuzz.contract.outcome import Data, Outcome
from diffuzz.engine.compare import Difference
from diffuzz.engine.signature import Signature

STATUSES = ("new", "model-fixed", "kernel-bug", "documented")
_TMP_PREFIX = ".tmp-"


# ---- atomic writes -------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- a finding and its readable form --------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    case: Case  # minimized
    kernel: Outcome
    model: Outcome
    differences: tuple[Difference, ...]
    signature: Signature
    notes: Mapping[str, Any] = field(default_factory=dict)  # confirmation, provenance (seed, index)


def _jsonable(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else str(value)


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, Data):
        text = value.to_json()
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=_jsonable)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def describe_case(case: Case) -> list[str]:
    """The case as a numbered step list."""
    lines = [f"{case.family}, {case.map.type} of size {case.map.size}, {case.pairs} pair(s), "
             f"payload {case.payload.pattern} seed {case.payload.seed}"]
    lines += [f"  insert key {e.key} <- {e.ep}" for e in case.inserts]
    for j, inv in enumerate(case.program):
        label = f"run {j}" if j < len(case.program) - 1 else f"run {j} and later"
        steps = ", ".join(f"{s.op}({', '.join(_arg_text(s))})" for s in inv.steps) or "no helpers"
        lines.append(f"  program {label}: {steps} -> {inv.verdict}")
    for i, ev in enumerate(case.events):
        args = ", ".join(_arg_text(ev))
        extra = ""
        if isinstance(ev, SEND_TYPES):
            payload = case.payload_for(i)
            extra = f"   # {payload[:24]!r}{'...' if len(payload) > 24 else ''}"
        lines.append(f"  [{i}] {ev.op}({args}){extra}")
    return lines


def _arg_text(obj: Any) -> list[str]:
    out = []
    for name, value in vars(obj).items():
        out.append(f"{name}={value.hex() if isinstance(value, bytes) else value}")
    return out


def format_diff(case: Case, differences: tuple[Difference, ...] | list[Difference]) -> str:
    lines = ["case:", *describe_case(case), "", f"{len(differences)} difference(s) (kernel vs model):"]
    for d in differences:
        lines.append(f"  {d.path}:")
        lines.append(f"    kernel: {_short(d.kernel)}")
        lines.append(f"    model:  {_short(d.model)}")
    return "\n".join(lines) + "\n"


def profiles_of(f: Finding) -> list[str]:
    """The kernel profile the model outcome was computed under (sim.run notes it)."""
    name = f.model.notes.get("profile")
    return [str(name)] if name else []


def _finding_md(bucket: str, f: Finding, state: Mapping[str, Any]) -> str:
    notes = "\n".join(f"- {k}: {v}" for k, v in f.notes.items()) or "- (none)"
    sig = f.signature
    return f"""# {bucket}

status: {state['status']}
count: {state['count']}
first seen: {state['first_seen']}
last seen: {state['last_seen']}
kernel release: {sig.release}
kernel profile: {', '.join(state.get('profiles', [])) or '(not recorded)'}

root cause (the first difference): {sig.root}
differing fields: {', '.join(sig.kinds)}
helpers: {', '.join(sig.helpers) or '(none)'}
events: {', '.join(sig.events) or '(none)'}

## Notes from the fuzz run

{notes}

## Explanation

(Triage: say why the kernel and the model differ, cite the spec section or kernel function, and
set the status line above: model-fixed once the model is corrected, kernel-bug when the kernel is
wrong, documented when the difference is known and accepted.)
"""


# ---- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    bucket: Path
    new: bool
    count: int


class Corpus:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.findings = self.root / "findings"

    def record(self, f: Finding) -> Recorded:
        """Save a new bucket, or count one more hit on a known one."""
        self.findings.mkdir(parents=True, exist_ok=True)
        name = f.signature.bucket()
        final = self.findings / name
        if (final / "bucket.json").exists():
            return self.hit(final, f.signature.release, profiles_of(f))
        now = _now()
        state = {"signature": f.signature.to_dict(), "count": 1, "first_seen": now, "last_seen": now,
                 "releases": [f.signature.release], "profiles": profiles_of(f), "status": "new"}
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}.", dir=self.findings))
        try:
            write_atomic(tmp / "case.json", f.case.to_json() + "\n")
            write_atomic(tmp / "kernel.json", f.kernel.to_json() + "\n")
            write_atomic(tmp / "model.json", f.model.to_json() + "\n")
            write_atomic(tmp / "diff.txt", format_diff(f.case, f.differences))
            write_atomic(tmp / "finding.md", _finding_md(name, f, state))
            write_atomic(tmp / "bucket.json", json.dumps(state, indent=1) + "\n")
            os.rename(tmp, final)  # atomic; fails if another writer got there first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if (final / "bucket.json").exists():
                return self.hit(final, f.signature.release, profiles_of(f))
            raise
        _fsync_dir(self.findings)
        return Recorded(final, True, 1)

    def hit(self, bucket: Path, release: str, profiles: Iterable[str], n: int = 1) -> Recorded:
        """Count `n` more occurrences, seen on `release` under the model's `profiles`, on an
        existing bucket (no new files)."""
        state = json.loads((bucket / "bucket.json").read_text())
        now = _now()
        state["count"] = int(state.get("count", 0)) + n
        state["last_seen"] = now
        if release not in state.setdefault("releases", []):
            state["releases"].append(release)
        for name in profiles:
            if name not in state.setdefault("profiles", []):
                state["profiles"].append(name)
        write_atomic(bucket / "bucket.json", json.dumps(state, indent=1) + "\n")
        md = bucket / "finding.md"
        if md.exists():
            text = md.read_text()
            text = re.sub(r"(?m)^count: .*$", f"count: {state['count']}", text, count=1)
            text = re.sub(r"(?m)^last seen: .*$", f"last seen: {now}", text, count=1)
            write_atomic(md, text)
        return Recorded(bucket, False, state["count"])

    def buckets(self) -> Iterator[Path]:
        """Complete buckets, in name order (half-built temporary directories are skipped)."""
        if not self.findings.is_dir():
            return
        for p in sorted(self.findings.iterdir()):
            if not p.name.startswith(".") and (p / "bucket.json").is_file() and (p / "case.json").is_file():
                yield p

    def remove_stale_tmp(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files and directories left by killed writers."""
        if not self.findings.is_dir():
            return 0
        n = 0
        cutoff = time.time() - older_than_s
        for p in self.findings.rglob(_TMP_PREFIX + "*"):
            if p.lstat().st_mtime < cutoff:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                n += 1
        return n


def read_status(bucket: Path) -> str:
    """The triage status: the `status:` line of finding.md (people edit it), else bucket.json."""
    md = bucket / "finding.md"
    if md.exists():
        m = re.search(r"(?m)^status:\s*(\S+)", md.read_text())
        if m and m.group(1) in STATUSES:
            return m.group(1)
    try:
        return json.loads((bucket / "bucket.json").read_text()).get("status", "new")
    except (OSError, ValueError):
        return "new"


def _bucket_list(bucket: Path, key: str) -> list[str]:
    try:
        return list(json.loads((bucket / "bucket.json").read_text()).get(key, []))
    except (OSError, ValueError):
        return []


def read_releases(bucket: Path) -> list[str]:
    return _bucket_list(bucket, "releases")


def read_profiles(bucket: Path) -> list[str]:
    """The kernel profiles whose model the recorded kernel.json is evidence for (bucket.json
    "profiles"; tests/model/test_profiles.py replays it model-only under each)."""
    return _bucket_list(bucket, "profiles")
