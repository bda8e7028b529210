"""Campaign state in a work directory, for runs that last days and survive restarts.

In the spirit of AFL's fuzzer_stats, a work directory holds:

  state.json     everything needed to resume: counters, elapsed time, seen features, the seed
                 cursor, bucket ids.  Rewritten atomically (tmp + fsync + rename) and guarded by a
                 crc32, so a damaged file is detected, never half-read.
  stats.json     the same numbers for people and scripts (rates, last find, command line),
                 rewritten atomically at most every `flush_interval` seconds and on close.
  events.jsonl   one JSON object a line: start, resume, new_finding, finding, flaky, hang,
                 problem, stop ...  Appended and flushed per event; every line carries the
                 counters, so a campaign whose state.json is lost resumes from the last line.
  .lock          flock()ed while a campaign runs, so two fuzzers never share a directory.

Use:

    camp = Campaign.open(workdir, sys.argv, os.uname().release, "random")
    while running:
        seed = camp.next_seed()          # never handed out twice, even across kill -9
        ...run the case...
        camp.record_execs(1)
        camp.add_features(fs)            # -> how many were new
        camp.record_finding(bucket, new=True)
        camp.maybe_flush()               # cheap; writes at most every few seconds
    camp.close("time limit")

A full disk (ENOSPC, or any OSError while saving) never stops the campaign: the problem is
reported once on stderr (and in events.jsonl if that still takes a line), the old files stay
whole, and the save is retried at the next flush.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from diffuzz.engine.campaign_state import (
    COUNTERS,
    EVENTS,
    LOCK,
    RECENT_WINDOW,
    SEED_BLOCK,
    STATE,
    STATS,
    CampaignError,
    CampaignState,
    FileOps,
    recover_from_events,
    state_from_bytes,
    state_to_bytes,
)


class Campaign:
    """A running campaign.  Create with `Campaign.open`; not thread-safe (one engine loop)."""

    def __init__(self, workdir: Path, state: CampaignState, meta: dict[str, Any], fs: FileOps, stderr: TextIO,
                 flush_interval: float, lock_fd: int, events_fd: int) -> None:
        self.workdir = workdir
        self._s = state
        self._meta = meta
        self._fs = fs
        self._stderr = stderr
        self.flush_interval = flush_interval
        self._lock_fd = lock_fd
        self._events_fd = events_fd
        self._t0 = time.monotonic()
        self._elapsed0 = state.elapsed
        self._execs0 = state.execs
        self._last_flush = -math.inf  # the first call flushes (monotonic time starts at boot)
        self._samples: deque[tuple[float, int]] = deque([(self._t0, state.execs)])
        self._reserved = state.seed_cursor  # end of the seed block recorded on disk
        self._failing: dict[str, str] = {}  # what -> the error, while saving it keeps failing
        self._closed = False

    # ---- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, workdir: str | os.PathLike[str], argv: Iterable[str], kernel_release: str, engine: str, *,
             flush_interval: float = 5.0, fs: FileOps | None = None, stderr: TextIO | None = None) -> Campaign:
        """Create a campaign in `workdir`, or resume the one there.

        Raises CampaignError (one clear sentence) when the directory cannot be created or
        another diffuzz holds it.  A missing or damaged state.json is not an error: the
        campaign resumes from what events.jsonl holds and says so on stderr and in the log.
        """
        path = Path(workdir)
        err = stderr if stderr is not None else sys.stderr
        fs = fs or FileOps()
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CampaignError(f"cannot use work directory {path}: {e.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(lock_fd)
            raise CampaignError(f"{path} is in use by another diffuzz (pid {holder}); "
                                "stop it or choose another --workdir") from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)

        state, kind, problem = cls._load(path)
        now = time.time()
        if kind == "start":
            state.start_time = now
        state.sessions += 1
        try:
            events_fd = os.open(path / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            os.close(lock_fd)
            raise CampaignError(f"cannot open {path / EVENTS}: {e.strerror}") from None
        meta = {"kernel_release": kernel_release, "engine": engine, "command_line": " ".join(argv)}
        camp = cls(path, state, meta, fs, err, flush_interval, lock_fd, events_fd)
        if problem:
            camp._report("state", problem)
        camp.event(kind, kernel_release=kernel_release, engine=engine, command_line=meta["command_line"],
                   pid=os.getpid())
        camp.flush()
        return camp

    @staticmethod
    def _load(path: Path) -> tuple[CampaignState, str, str]:
        """(state, "start" or "resume", a problem to report or "")."""
        state_path = path / STATE
        try:
            data = state_path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as e:
            data = b""
            why = f"unreadable ({e.strerror})"
        if data is None:
            if not (path / EVENTS).exists():
                return CampaignState(), "start", ""
            why = "missing"
        else:
            try:
                return state_from_bytes(data), "resume", ""
            except ValueError as e:
                why = str(e)
        recovered, how = recover_from_events(path / EVENTS)
        problem = f"{state_path} is {why}; " if why == "missing" else f"{state_path}: {why}; "
        if recovered is None:
            return CampaignState(), "start", problem + how + "; starting a new campaign"
        return recovered, "resume", problem + how

    # ---- counting ---------------------------------------------------------------------

    def set_kernel_profile(self, profile: dict[str, Any]) -> None:
        """The profile the model runs under and the probes that chose it (diffuzz/engine/probes.py):
        in stats.json from now on, and one `kernel_profile` line in events.jsonl per session."""
        self._meta["kernel_profile"] = profile
        self.event("kernel_profile", **profile)
        self.flush()

    def record_execs(self, n: int = 1) -> None:
        self._s.execs += n

    def add_features(self, fs: Iterable[int]) -> int:
        """Merge a case's features into the coverage; returns how many were new."""
        seen = self._s.features
        before = len(seen)
        seen.update(fs)
        return len(seen) - before

    def record_finding(self, bucket_id: str, new: bool, count: int = 1) -> None:
        """`count` confirmed differences in `bucket_id` (one event); `new` when the corpus had no
        such bucket."""
        s = self._s
        s.findings_total += count
        s.last_find = time.time()
        if bucket_id not in s.buckets:
            s.buckets.append(bucket_id)
        self.event("new_finding" if new else "finding", bucket=bucket_id, **({"count": count} if count != 1 else {}))

    def record_flaky(self, **fields: Any) -> None:
        """A difference that did not reproduce on re-run."""
        self._s.flaky += 1
        self.event("flaky", **fields)

    def record_hang(self, **fields: Any) -> None:
        """A case whose kernel side passed its deadline."""
        self._s.hangs += 1
        self.event("hang", **fields)

    def stream_seed(self, requested: int | None, default: int) -> int:
        """The seed of the random engine's case stream: `requested` (--seed) if given, else the
        one this campaign ran with before, else `default`.  Case i of the stream is
        random_case(stream_seed, i) with i from next_seed(), so a resumed campaign with the same
        stream seed continues the stream instead of repeating it."""
        s = self._s
        seed = requested if requested is not None else s.stream_seed if s.stream_seed is not None else default
        if s.stream_seed is not None and seed != s.stream_seed:
            self.event("seed_changed", old=s.stream_seed, new=seed)
        s.stream_seed = seed
        return seed

    def next_seed(self) -> int:
        """The next seed for the random engine; never repeats across restarts."""
        s = self._s
        if s.seed_cursor >= self._reserved:
            self._reserved = s.seed_cursor + SEED_BLOCK
            self._save_state()
        seed = s.seed_cursor
        s.seed_cursor += 1
        return seed

    # ---- reading ----------------------------------------------------------------------

    @property
    def execs(self) -> int:
        return self._s.execs

    @property
    def sessions(self) -> int:
        return self._s.sessions

    @property
    def hangs(self) -> int:
        return self._s.hangs

    @property
    def feature_coverage(self) -> int:
        return len(self._s.features)

    @property
    def unique_findings(self) -> int:
        return len(self._s.buckets)

    def elapsed(self) -> float:
        """Seconds of fuzzing over every session of this campaign."""
        return self._elapsed0 + time.monotonic() - self._t0

    def stats(self) -> dict[str, Any]:
        """What stats.json holds."""
        s = self._s
        now_m = time.monotonic()
        elapsed = self.elapsed()
        old_t, old_execs = self._samples[0]
        recent = (s.execs - old_execs) / (now_m - old_t) if now_m - old_t > 0.5 else 0.0
        return {
            "execs_done": s.execs,
            "execs_per_sec": round(s.execs / elapsed, 1) if elapsed > 0 else 0.0,
            "execs_per_sec_recent": round(recent, 1),
            "unique_findings": len(s.buckets),
            "findings_total": s.findings_total,
            "flaky": s.flaky,
            "hangs": s.hangs,
            "last_find": s.last_find,
            "feature_coverage": len(s.features),
            "seed_cursor": s.seed_cursor,
            "stream_seed": s.stream_seed,
            "elapsed_seconds": round(elapsed, 1),
            "sessions": s.sessions,
            **self._meta,
            "start_time": s.start_time,
            "last_update": time.time(),
            "pid": os.getpid(),
            "save_problems": sorted(self._failing.values()),
        }

    # ---- writing ----------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        """Append one line to events.jsonl (with the counters, so it can rebuild state)."""
        s = self._s
        counters = {n: getattr(s, n) for n in COUNTERS}
        counters.update(elapsed=round(self.elapsed(), 3), start_time=s.start_time, last_find=s.last_find,
                        seed_cursor=max(s.seed_cursor, self._reserved), sessions=s.sessions,
                        stream_seed=s.stream_seed)
        line = json.dumps({"time": round(time.time(), 3), "kind": kind, **fields, "counters": counters},
                          default=str) + "\n"
        self._guard("events", lambda: self._fs.append(self._events_fd, line.encode()))

    def maybe_flush(self) -> bool:
        """Write stats.json and state.json if `flush_interval` has passed; True if it did."""
        if time.monotonic() - self._last_flush < self.flush_interval:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        now = time.monotonic()
        self._last_flush = now
        self._samples.append((now, self._s.execs))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RECENT_WINDOW:
            self._samples.popleft()
        # Reserve seeds up to one block ahead of the cursor with every save.
        self._reserved = max(self._reserved, self._s.seed_cursor + SEED_BLOCK)
        self._save_state()
        self._guard("stats", lambda: self._fs.write_atomic(self.workdir / STATS,
                                                           json.dumps(self.stats(), indent=1).encode() + b"\n"))

    def close(self, reason: str) -> None:
        """Log `stop`, write everything, release the directory.  Safe to call twice."""
        if self._closed:
            return
        self.event("stop", reason=reason)
        self.flush()
        self._closed = True
        os.close(self._events_fd)
        os.close(self._lock_fd)

    def __enter__(self) -> Campaign:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close("error" if exc_type else "done")

    def _save_state(self) -> None:
        s = self._s
        snapshot = CampaignState(**{n: getattr(s, n) for n in COUNTERS}, elapsed=self.elapsed(),
                                 start_time=s.start_time, last_find=s.last_find,
                                 seed_cursor=max(s.seed_cursor, self._reserved), sessions=s.sessions,
                                 buckets=s.buckets, features=s.features, stream_seed=s.stream_seed)
        self._guard("state", lambda: self._fs.write_atomic(self.workdir / STATE, state_to_bytes(snapshot)))

    def _guard(self, what: str, write: Any) -> None:
        """Run a write; on OSError report once (until it works again) and carry on."""
        try:
            write()
        except OSError as e:
            if what not in self._failing:
                self._failing[what] = f"{what}: {e.strerror or e}"
                self._report(what, f"cannot save {what} in {self.workdir}: {e.strerror or e}; "
                                   "fuzzing goes on, retrying at the next flush")
            return
        if what in self._failing:
            del self._failing[what]
            self._report(what, f"{what} saved again")

    def _report(self, what: str, message: str) -> None:
        print(f"diffuzz: {message}", file=self._stderr, flush=True)
        if what != "events":
            self.event("problem", about=what, message=message)
