"""The state of one case on the model: its sockets, the map, the page frag, the run records.

A World is made for one case (no global state, no I/O, deterministic) and holds what the
kernel functions in sim/ read and change; the events that drive it are sim/syscalls.py.  It
sits below the kernel functions (tcp_bpf.py, helpers.py take a World), so it imports only the
layers under them (tcp, sockmap, page frags, the profile).
"""

from __future__ import annotations

from diffuzz.contract.case import ALPHABET, ApplyBytes, Case, CorkBytes, Redirect
from diffuzz.contract.outcome import MAX_RUN_RECORDS, Run, RunContext
from sim.page_frag import PageFrag
from sim.profile import (
    FIONREAD_INGRESS_MSG,
    FIONREAD_TCP_INQ,
    MEMCOPY_RETURNS_COPIED,
    PUSH_COPIES_TO_TASK_FRAG,
    REFERENCE,
    STALE_SK_REDIR,
    TCP_BPF_SENDPAGE,
    Profile,
)
from sim.sockmap import SockMap
from sim.tcp import Sock, release_sock, tcp_push_pending_frames

AF_INET = 2
AF_INET6 = 10


class World:
    """The sockets, the map and the run records of one case."""

    __slots__ = (
        "alpha_pos",
        "alpha_seed",
        "audit",
        "case",
        "ctx_cache",
        "family",
        "ff_from",
        "ff_ok",
        "fionread",
        "frag",
        "frags",
        "kernel_bugs",
        "last_prog",
        "layout_doubt",
        "map",
        "memcopy_copied",
        "named",
        "pinned",
        "profile",
        "program",
        "push_copies",
        "run_count",
        "runs",
        "sendpage",
        "sig",
        "socks",
        "stale_sk_redir",
        "task",
    )

    def __init__(self, case: Case, profile: Profile = REFERENCE) -> None:
        self.case = case
        self.profile = profile
        # The profile's behaviours, read once: the hot path tests plain attributes.
        self.stale_sk_redir = profile.has(STALE_SK_REDIR)
        self.memcopy_copied = profile.has(MEMCOPY_RETURNS_COPIED)
        self.push_copies = profile.has(PUSH_COPIES_TO_TASK_FRAG)
        self.sendpage = profile.has(TCP_BPF_SENDPAGE)
        self.fionread = (profile.has(FIONREAD_INGRESS_MSG), profile.has(FIONREAD_TCP_INQ))
        self.program = case.program
        self.last_prog = len(case.program) - 1
        # The run shortcut of tcp_bpf_send_verdict: runs from ff_from on use the last step list
        # and are not recorded; ff_ok when that list only sets metadata.
        self.ff_from = max(self.last_prog, MAX_RUN_RECORDS)
        self.ff_ok = all(type(s) in (ApplyBytes, CorkBytes, Redirect) for s in case.program[-1].steps)
        self.pinned = case.fresh_thread  # windows are exact only with a fresh frag per send (§2.2)
        self.family = AF_INET6 if case.family == "ipv6" else AF_INET
        self.map = SockMap(case.map.type, case.map.size)
        self.map.attach()  # set-up step 4: the program is attached before any insert
        self.socks: dict[str, Sock] = {}
        for i in range(case.pairs):
            c, p = Sock(f"c{i}", self.family), Sock(f"p{i}", self.family)
            c.peer, p.peer = p, c
            self.socks[c.name] = c
            self.socks[p.name] = p
        self.runs: list[Run] = []
        self.run_count = 0
        self.sig = [False]  # SIGPIPE raised during the current syscall
        self.frag = PageFrag()  # the frag of the send in progress
        self.frags: dict[int, PageFrag] = {}  # named sender threads' frags (sim/page_frag.py)
        self.named = False  # the send in progress is on a named thread
        self.layout_doubt: int | None = None  # the first send whose layout is not fixed
        self.task = 0
        self.alpha_pos = 0  # bytes of the alphabet stream used by earlier sends
        self.alpha_seed = case.payload.seed if case.payload.pattern == "alphabet" else None
        self.ctx_cache: dict[tuple[str, int], RunContext] = {}  # equal contexts shared between runs
        # Tests set this to a list to collect (msg.size, sum of element lengths, element
        # count) after every helper step.
        self.audit: list[tuple[int, int, int]] | None = None
        # The documented kernel bugs (K1, K2: docs/kernel-notes.md) this case made the model copy,
        # named where the model reproduces them; the outcome's notes list them, so the invariants
        # (diffuzz/engine/invariants.py KNOWN_BUGS) know the breach is the kernel's, on purpose.
        self.kernel_bugs: set[str] = set()

    def payload(self, i: int, size: int) -> bytes:
        """Case.payload_for(i), with the alphabet's running offset kept here instead of
        summed again for every send (tests/model check the two agree)."""
        start = self.alpha_pos
        self.alpha_pos = start + size
        if self.alpha_seed is None:
            return self.case.payload_for(i)
        off = (start + self.alpha_seed) % len(ALPHABET)
        return (ALPHABET * ((off + size) // len(ALPHABET) + 1))[off : off + size]

    def push_pending_frames(self) -> None:
        """What the runner does before recv, fionread and the final drain: TCP_NODELAY set
        again on every open socket pushes frames held back by MSG_MORE (docs/execution.md)."""
        for sk in self.socks.values():
            if not sk.closed and sk.wq.buf:
                tcp_push_pending_frames(sk)
        self.settle()

    def settle(self) -> None:
        """RSTs that answered data sent to a closed socket are processed once the sender
        releases its socket lock, i.e. after the syscall (sim/tcp.py)."""
        for sk in self.socks.values():
            release_sock(sk)
