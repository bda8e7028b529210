"""The bounds of a case, the flag and constant values both sides use, and CaseError.

Part of the contract (diffuzz/contract/case.py gathers it): imports nothing else of the project.
"""

from __future__ import annotations

from collections.abc import Mapping

FORMAT_VERSION = 1

U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF

# Limits that keep a case runnable in bounded time and memory.  They bound the case, not
# the helper arguments: those are raw u32/u64 on purpose (bad values are the point).
MAX_PAIRS = 8
MAX_MAP_SIZE = 1024
MAX_PROGRAMS = 32
MAX_STEPS = 16
MAX_WRITE = 16
# A write step stores only at offsets up to this: the verifier grants direct packet access up to
# data + MAX_PACKET_OFF (0xffff), and a program taking the offset at run time must leave room
# for the longest store.  Past it the step is skipped (rc -1) on every backend and in the model.
WRITE_MAX_OFFSET = 0xFFFF - MAX_WRITE
MAX_EVENTS = 256
MAX_SEND = 1 << 20
MAX_IOV = 64
MAX_SPLICE = 1 << 16  # one user pipe of 16 page buffers holds at most this much
MAX_RECV = 1 << 20
MAX_THREADS = 16  # sender thread ids 0..15 (events.py)

FAMILIES = ("ipv4", "ipv6")
MAP_TYPES = ("sockmap", "sockhash")
PATTERNS = ("alphabet", "random")

# Send flags a case may use, with their Linux values.  MSG_OOB, MSG_ZEROCOPY and
# MSG_FASTOPEN are left out on purpose (spec §5.1: they change TCP, not sk_msg).
SEND_FLAGS: Mapping[str, int] = {
    "MSG_DONTWAIT": 0x40,
    "MSG_EOR": 0x80,
    "MSG_NOSIGNAL": 0x4000,
    "MSG_MORE": 0x8000,
}
SPLICE_FLAGS: Mapping[str, int] = {"SPLICE_F_NONBLOCK": 0x02, "SPLICE_F_MORE": 0x04}
SHUT_HOW: Mapping[str, int] = {"SHUT_RD": 0, "SHUT_WR": 1, "SHUT_RDWR": 2}

SK_DROP = 0
SK_PASS = 1
BPF_F_INGRESS = 1

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class CaseError(ValueError):
    """A case that does not fit the format; the message names the offending field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


