"""The campaign's files and their codec: state.json (crc32-guarded), the events.jsonl recovery,
and FileOps (atomic writes), for diffuzz/engine/campaign.py.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path

STATE_VERSION = 1
STATE = "state.json"
STATS = "stats.json"
EVENTS = "events.jsonl"
LOCK = ".lock"

# Seeds are reserved in blocks: state.json records the end of the block before any seed of
# it is handed out, so a resumed campaign starts after it and never redoes a case.
SEED_BLOCK = 1 << 16
RECENT_WINDOW = 60.0  # seconds over which execs_per_sec_recent is measured

COUNTERS = ("execs", "findings_total", "flaky", "hangs")


class CampaignError(Exception):
    """The work directory cannot be used; the message says why and what to do."""


class FileOps:
    """The two ways a campaign writes to disk.  Tests inject a subclass that fails like a
    full disk; nothing else should need to."""

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Replace `path` by `data` all at once: tmp file, fsync, rename, fsync the directory."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def append(self, fd: int, data: bytes) -> None:
        """Append one whole line or nothing: a short or failed write is cut back off."""
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            os.ftruncate(fd, before)
            raise


@dataclass
class CampaignState:
    """What state.json holds (and what events.jsonl lines can rebuild, less the features)."""

    execs: int = 0
    findings_total: int = 0
    flaky: int = 0
    hangs: int = 0
    elapsed: float = 0.0  # seconds of earlier sessions
    start_time: float = 0.0  # unix time the campaign first started
    last_find: float | None = None
    seed_cursor: int = 0  # the next seed a fresh session may hand out
    sessions: int = 0
    buckets: list[str] = field(default_factory=list)
    features: set[int] = field(default_factory=set)
    stream_seed: int | None = None  # the random engine's --seed: resumed runs keep its case stream


def pack_features(fs: set[int]) -> str:
    """Sorted u32s, delta-coded, zlib-compressed, base64: a few bytes per feature."""
    values = sorted(fs)
    deltas = array("I", (b - a for a, b in zip([0, *values], values, strict=False)))
    return base64.b64encode(zlib.compress(deltas.tobytes(), 6)).decode()


def unpack_features(text: str) -> set[int]:
    deltas = array("I")
    deltas.frombytes(zlib.decompress(base64.b64decode(text)))
    out: set[int] = set()
    total = 0
    for d in deltas:
        total += d
        out.add(total)
    return out


def state_to_bytes(s: CampaignState) -> bytes:
    body = {
        "version": STATE_VERSION,
        **{name: getattr(s, name) for name in COUNTERS},
        "elapsed": round(s.elapsed, 3),
        "start_time": s.start_time,
        "last_find": s.last_find,
        "seed_cursor": s.seed_cursor,
        "sessions": s.sessions,
        "buckets": s.buckets,
        "stream_seed": s.stream_seed,
        "feature_count": len(s.features),
        "features": pack_features(s.features),
    }
    text = json.dumps(body, sort_keys=True)
    return json.dumps({"crc32": zlib.crc32(text.encode()), "body": body}, sort_keys=True).encode() + b"\n"


def state_from_bytes(data: bytes) -> CampaignState:
    """Parse state.json; raises ValueError saying what is wrong with it."""
    try:
        outer = json.loads(data)
        body = outer["body"]
        crc = outer["crc32"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a complete state file ({type(e).__name__})") from None
    if zlib.crc32(json.dumps(body, sort_keys=True).encode()) != crc:
        raise ValueError("checksum mismatch (the file was damaged after it was written)")
    if body.get("version") != STATE_VERSION:
        raise ValueError(f"state version {body.get('version')!r}, this diffuzz reads {STATE_VERSION}")
    try:
        s = CampaignState(
            **{name: int(body[name]) for name in COUNTERS},
            elapsed=float(body["elapsed"]),
            start_time=float(body["start_time"]),
            last_find=body["last_find"],
            seed_cursor=int(body["seed_cursor"]),
            sessions=int(body["sessions"]),
            buckets=list(body["buckets"]),
            features=unpack_features(body["features"]),
            stream_seed=None if body.get("stream_seed") is None else int(body["stream_seed"]),
        )
    except (KeyError, TypeError, ValueError, zlib.error) as e:
        raise ValueError(f"a field is missing or malformed ({e})") from None
    if len(s.features) != body["feature_count"]:
        raise ValueError("feature set does not match its count")
    return s


def recover_from_events(path: Path) -> tuple[CampaignState | None, str]:
    """Rebuild counters from the last whole line of events.jsonl (features are not logged)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return None, "no events.jsonl either"
    except OSError as e:
        return None, f"events.jsonl unreadable: {e.strerror}"
    s: CampaignState | None = None
    buckets: dict[str, None] = {}
    for line in lines:
        try:
            ev = json.loads(line)
            if ev.get("kind") == "new_finding":
                buckets[str(ev["bucket"])] = None
            c = ev["counters"]
            s = CampaignState(**{n: int(c[n]) for n in COUNTERS}, elapsed=float(c["elapsed"]),
                       start_time=float(c["start_time"]), last_find=c["last_find"],
                       seed_cursor=int(c["seed_cursor"]), sessions=int(c["sessions"]),
                       stream_seed=None if c.get("stream_seed") is None else int(c["stream_seed"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a torn last line, or a line from a foreign tool: skip it
    if s is None:
        return None, "events.jsonl has no usable line"
    s.buckets = list(buckets)
    return s, (f"counters, seed cursor and {len(buckets)} bucket ids recovered from events.jsonl; "
               "feature coverage starts empty")
