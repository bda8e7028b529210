"""The seam between the socket executor and a program backend.

A backend turns a Case's program (its step lists) into a loaded SK_MSG verdict program and
a map of the case's type and size, and reads back what the program recorded on each run.
Two backends implement it: interp_backend (one interpreter program per worker, fast) and
bcc_backend (per-case generated C compiled by bcc, for confirmation).  The executor uses
only what is here, so both backends are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from diffuzz.contract.case import Case


@dataclass(frozen=True)
class RawRun:
    """One run as the program recorded it, before addresses are mapped to endpoints."""

    size_in: int
    win_in: int
    rcs: tuple[int, ...]  # per executed step, s64
    wins: tuple[int, ...]  # data_end - data after each step
    size_out: int
    verdict: int  # u32 returned
    family: int
    local_ip: bytes  # 4 or 16 bytes, network order, as in sk_msg_md
    local_port: int  # as the program read it (host order per UAPI)
    remote_ip: bytes
    remote_port: int  # as the program read it (network order per UAPI)
    tid: int  # lower 32 bits of bpf_get_current_pid_tgid()
    head: bytes = b""  # the window's first bytes on entry (at most outcome.RUN_HEAD)


class CaseProgram(Protocol):
    """A verdict program and an empty map, ready for one case.  Not reused across cases
    by the executor: it calls `finish()` and asks the backend for a new one."""

    map_fd: int

    def attach(self) -> int:
        """BPF_PROG_ATTACH to map_fd as BPF_SK_MSG_VERDICT; 0 or -errno."""

    def detach(self) -> int:
        """BPF_PROG_DETACH; 0 or -errno."""

    def insert(self, key: int, sock_fd: int, flags: int) -> int:
        """bpf_map_update_elem(map, key, sock_fd, flags); 0 or -errno."""

    def delete(self, key: int) -> int:
        """bpf_map_delete_elem(map, key); 0 or -errno."""

    def runs(self) -> tuple[int, list[RawRun]]:
        """(total runs so far, the recorded runs so far: at most MAX_RUN_RECORDS)."""

    def finish(self) -> None:
        """Empty the map (every key deleted), detach, and release what the case used.
        Afterwards no socket is in the map."""


class Backend(Protocol):
    name: str

    def prepare(self, case: Case) -> CaseProgram:
        """A program for this case's step lists and a fresh empty map of its type and size,
        with the run counter and records zeroed.  Not yet attached."""

    def close(self) -> None:
        """Release every fd, map and program the backend holds."""


class KernelUnsupported(RuntimeError):
    """This kernel or this process cannot do what is needed (no BPF, not root, no sockmap,
    no clang object).  The message says what is missing and how to fix it."""


class WorkerStopped(KernelUnsupported):
    """A kernel worker was sent a stop signal while it was starting (kernel_runner/pool.py
    STOP_SIGNALS): not a kernel that cannot, but somebody asking the campaign to stop."""
