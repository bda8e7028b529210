"""Thread ids the SK_MSG programs record, and the PID namespace they belong to.

The programs record `bpf_get_current_pid_tgid()`, a thread id in the initial PID namespace;
the worker knows its send threads by `gettid()`, an id in its own PID namespace.  The two agree
only in the initial namespace.  In a container started without `--pid=host` no record would
name its send thread: every run's ctx.task would read "?<tid>", so every kernel case would
differ from the model.  The worker refuses to start there instead (found by building the
Dockerfile: docs/long-runs.md, "Docker").
"""

from __future__ import annotations

import os

PROC_PID_INIT_INO = 0xEFFFFFFC  # include/linux/proc_ns.h: the initial PID namespace's inode

FOREIGN_PID_NS = ("this process is not in the initial PID namespace (a container without --pid=host?): "
                  "BPF programs see the host's thread ids, so program runs cannot be matched to the sends "
                  "that made them; run the container with --pid=host")


def probe_pid_namespace() -> str | None:
    """Why program runs cannot be matched to send threads here, or None if they can."""
    try:
        ino = os.stat("/proc/self/ns/pid").st_ino
    except OSError as e:
        return f"cannot read /proc/self/ns/pid ({e.strerror}): is /proc mounted?"
    return None if ino == PROC_PID_INIT_INO else FOREIGN_PID_NS
