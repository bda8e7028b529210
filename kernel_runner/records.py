"""What the program recorded (backend.RawRun) as an outcome.Run.

The only translation is the context: struct sk_msg_md holds addresses and ports, the
Outcome names endpoints.  The UAPI reads local_port in host byte order and remote_port in
network byte order (include/uapi/linux/bpf.h, struct sk_msg_md).  Exactly: the u32 the
program reads for remote_port is skc_dport (a big-endian u16) shifted left by 16
(net/core/filter.c sk_msg_convert_ctx_access, `BPF_LSH 16` on little-endian), so the
network-order port sits in the high half: port 49753 (0xC259) reads as 0x59C20000.
A value that names no endpoint of the case is reported raw, so a wrong context shows up
as a difference instead of a crash.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from diffuzz.contract.case import peer_of
from diffuzz.contract.outcome import Data, Run, RunContext, StepRecord
from kernel_runner.backend import RawRun

EndpointAt = Callable[[bytes, int, "str | None"], "str | None"]  # (ip, port, preferred name) -> name


def to_run(raw: RawRun, ep: str, task: int | str, endpoint_at: EndpointAt) -> Run:
    """The Run for one record.  ep is the endpoint whose send ran the program, task the
    index of the event whose thread ran it (or "?<tid>").  An address two endpoints share
    names ep (local) or its peer (remote) when it is theirs (Topology.endpoint_at)."""
    peer = peer_of(ep) if ep[:1] in ("c", "p") else None
    return Run(
        ep=ep,
        size_in=raw.size_in,
        win_in=raw.win_in,
        steps=tuple(StepRecord(rc=rc, win=win) for rc, win in zip(raw.rcs, raw.wins, strict=True)),
        size_out=raw.size_out,
        verdict=raw.verdict,
        head=Data(raw.head),
        ctx=RunContext(
            family=raw.family,
            local=endpoint_name(raw.local_ip, raw.local_port, endpoint_at, prefer=ep),
            remote=endpoint_name(raw.remote_ip, remote_port_host(raw.remote_port), endpoint_at, raw.remote_port,
                                 prefer=peer),
            task=task,
        ),
    )


def remote_port_host(remote_port: int) -> int:
    """The port in sk_msg_md.remote_port (network order, high half; see the module doc),
    or -1 when the value has that shape on no little-endian kernel (low half not zero)."""
    if remote_port & 0xFFFF or not 0 < remote_port <= 0xFFFF_FFFF:
        return -1
    return socket.ntohs(remote_port >> 16)


def endpoint_name(ip: bytes, port: int, endpoint_at: EndpointAt, raw_port: int | None = None,
                  prefer: str | None = None) -> str:
    """The endpoint at (ip, port), or "?<ip>:<port as the program read it>" ("?[<ip6>]:<port>")."""
    name = endpoint_at(ip, port, prefer)
    if name is not None:
        return name
    shown = port if raw_port is None else raw_port
    if len(ip) == 4:
        return f"?{socket.inet_ntop(socket.AF_INET, ip)}:{shown}"
    if len(ip) == 16:
        return f"?[{socket.inet_ntop(socket.AF_INET6, ip)}]:{shown}"
    return f"?{ip.hex()}:{shown}"


def task_of(tid: int, event_index: int, issuing_tid: int) -> int | str:
    """docs/execution.md: the event whose thread ran the program, by the thread's native id."""
    return event_index if tid == issuing_tid else f"?{tid}"
