"""The kernel log, read without blocking: the lines the kernel printed while a case ran.

Each worker opens /dev/kmsg once, seeks to its end (SEEK_END: only what comes later), and after
every case reads whatever records arrived (O_NONBLOCK: EAGAIN when there are none).  A record
is "prio,seq,usec,flags;text"; the text is kept.  Which lines matter (WARN, BUG, Oops, KASAN,
refcount, general protection) is the engine's table (diffuzz/engine/invariants.py), not
decided here: this only reports.  /dev/kmsg is global, so a line another worker's case caused
can land in this worker's case: the engine's re-run tells the two apart.
"""

from __future__ import annotations

import errno
import os

MAX_LINES = 64  # per case: a flood (a WARN in a loop) keeps its start


class KmsgWatch:
    def __init__(self, path: str = "/dev/kmsg") -> None:
        self.fd: int | None = None
        self.unavailable = ""
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            self.close()
            self.unavailable = f"{path}: {e.strerror}"

    def read(self) -> list[str]:
        """The text of every record since the last read (at most MAX_LINES)."""
        lines: list[str] = []
        if self.fd is None:
            return lines
        while True:
            try:
                rec = os.read(self.fd, 8192)  # one record per read
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them: go on
                    continue
                break
            if not rec:
                break
            if len(lines) < MAX_LINES:
                text = rec.decode("utf-8", "replace").partition(";")[2]
                lines.append(text.split("\n", 1)[0].rstrip())
        return lines

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
