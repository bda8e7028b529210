"""The program of a case: one dataclass per helper call or action (tagged by `op` in JSON),
and an Invocation (one run's steps and return value).

Part of the contract (diffuzz/contract/case.py gathers it): imports nothing else of the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diffuzz.contract.limits import SK_PASS


@dataclass(frozen=True)
class ApplyBytes:
    """bpf_msg_apply_bytes(msg, bytes); the register is u64, the kernel keeps u32."""

    bytes: int
    op = "apply_bytes"


@dataclass(frozen=True)
class CorkBytes:
    """bpf_msg_cork_bytes(msg, bytes)."""

    bytes: int
    op = "cork_bytes"


@dataclass(frozen=True)
class PullData:
    """bpf_msg_pull_data(msg, start, end, flags)."""

    start: int
    end: int
    flags: int = 0
    op = "pull_data"


@dataclass(frozen=True)
class PushData:
    """bpf_msg_push_data(msg, start, len, flags)."""

    start: int
    len: int
    flags: int = 0
    op = "push_data"


@dataclass(frozen=True)
class PopData:
    """bpf_msg_pop_data(msg, start, len, flags)."""

    start: int
    len: int
    flags: int = 0
    op = "pop_data"


@dataclass(frozen=True)
class Write:
    """Store `data` at `offset` in the direct-access window [data, data_end).

    The program bounds-checks the whole store against data_end (the verifier insists);
    a store that does not fit is skipped and recorded with rc -1, nothing written.
    """

    offset: int
    data: bytes
    op = "write"


@dataclass(frozen=True)
class Redirect:
    """bpf_msg_redirect_map / bpf_msg_redirect_hash into the case's map.

    Which helper is used follows the map type: a sockmap takes the u32 key directly, a
    sockhash takes a pointer to the same u32 key.
    """

    key: int
    flags: int = 0
    op = "redirect"


Step = ApplyBytes | CorkBytes | PullData | PushData | PopData | Write | Redirect
STEP_TYPES: Mapping[str, type] = {
    t.op: t for t in (ApplyBytes, CorkBytes, PullData, PushData, PopData, Write, Redirect)
}

# The program's return value: SK_PASS (1), SK_DROP (0), any other u32, or LAST_RC, the
# return value of the last helper step (the common `return bpf_msg_redirect_map(...)`).
LAST_RC = "last_rc"
Verdict = int | str


@dataclass(frozen=True)
class Invocation:
    """What the program does on one run: helper steps in order, then a return value."""

    steps: tuple[Step, ...] = ()
    verdict: Verdict = SK_PASS


