"""The structured case generator: choices (diffuzz/engine/choice.py) in, a valid Case out.

One function, `generate(chooser, config)`, serves every engine: the seeded random engine
(`random_case`, `standard_mix`, `case_stream`), atheris (BytesChooser) and Hypothesis
(diffuzz/engine/strategies.py).  It never builds an invalid case: every Case it returns survives the
JSON round trip through diffuzz.contract.case.

What the distribution reaches (checked by tests/unit/test_generate.py): every helper and every
event kind in any order and repetition; helper arguments at the boundaries (0, 1, size-1,
size, size+1, 2^31, 2^32-1, u64 values); programs that change across invocations; apply and
cork spanning several sends; redirects to every endpoint (the sender itself included), ingress
and egress, missing keys and keys >= the map size; SOCKMAP and SOCKHASH; IPv4 and IPv6; every
send kind; recv, peek, FIONREAD, close with FIN or RST, shutdown, map delete and re-insert,
detach and attach between sends.

The deterministic zone (spec §10) the cases stay in by default is diffuzz/engine/zone.py.
"""

from __future__ import annotations

from diffuzz.contract.case import (
    BPF_F_INGRESS,
    LAST_RC,
    MAX_SEND,
    SK_DROP,
    SK_PASS,
    U32,
    U64,
    ApplyBytes,
    Attach,
    Case,
    Close,
    CorkBytes,
    Detach,
    Event,
    Fionread,
    Invocation,
    MapDelete,
    MapEntry,
    MapInsert,
    MapSpec,
    Payload,
    PopData,
    PullData,
    PushData,
    Recv,
    Redirect,
    Send,
    SendFile,
    SendMsg,
    Shutdown,
    SockOpt,
    Splice,
    Step,
    Write,
)
from diffuzz.engine.choice import Chooser, RandomChooser, WeightTable
from diffuzz.engine.zone import (
    DEFAULT,
    PUSH_ALWAYS_FAILS,
    PUSH_DETERMINISTIC_MAX,
    SENDS_PER_SENDER_MAX,
    STANDARD_MIX,
    VM_REPEATING_P,
    GenConfig,
    Hits,
    zone_layout,
    zone_more,
    zone_pushpop,
    zone_runs,
    zone_splice,
)

# Option tables, simplest option first (the chooser contract, diffuzz/engine/choice.py).
_STEP_KINDS = WeightTable([("apply", 3), ("cork", 2), ("redirect", 4), ("push", 3), ("pop", 3),
                           ("pull", 2), ("write", 1)])
_VERDICTS = WeightTable([(SK_PASS, 12), (LAST_RC, 4), (SK_DROP, 2), (2, 1), (U32, 1)])
_SEND_KINDS = WeightTable([("send", 6), ("sendmsg", 3), ("sendfile", 1), ("splice", 1)])
_OTHER_KINDS = WeightTable([("recv", 5), ("fionread", 2), ("close", 1), ("shutdown", 1), ("map_delete", 2),
                            ("map_insert", 2), ("detach", 1), ("attach", 1)])
_REDIRECT_FLAGS = WeightTable([(0, 5), (BPF_F_INGRESS, 5), (2, 1), (3, 1)])
_INSERT_FLAGS = WeightTable([(0, 6), (1, 1), (2, 1), (3, 1)])  # BPF_ANY, NOEXIST, EXIST, invalid
_SHUT = ("SHUT_WR", "SHUT_RD", "SHUT_RDWR")
# Helper argument classes: boundaries relative to a message size the program may see, and
# the u32/u64 edges where the kernel's truncations and overflow checks live (spec §0.3).
_ARG_CLASS = WeightTable([(0, 3), (1, 2), (2, 4), (3, 3), (4, 3), (5, 5), (6, 3), (7, 1), (8, 1), (9, 1), (10, 1),
                          (11, 1)])
# Classes 0..6: 0, 1, size, size-1, size+1, 0..size, 2..16; then fixed edges; 11: any u64.
_ARG_FIXED = (0, 1, 0, 0, 0, 0, 0, 1 << 31, U32, 1 << 32, U64)
_SEND_FLAGS = (("MSG_MORE", 0.08), ("MSG_DONTWAIT", 0.1), ("MSG_NOSIGNAL", 0.1), ("MSG_EOR", 0.04))
# Sender threads (diffuzz/contract/events.py): a thread per send (the pinned layout of spec §2.2),
# one thread for every send, or a few threads shared at random; sends from one thread to several
# sockets come with the last two.
_LAYOUTS = WeightTable([("own", 4), ("one", 3), ("few", 3)])
FEW_THREADS = 3
# Now and then many small sends (a corked message's ring fills at 17 elements: spec §2.3).
MANY_SENDS_P = 0.06
MANY_SENDS = (17, 24)
MANY_SEND_LEN = (1, 64)


def _arg(ch: Chooser, sizes: list[int]) -> int:
    """A helper argument (u64 register), biased to the boundaries of a plausible msg->size."""
    cls = ch.weighted(_ARG_CLASS)
    if 2 <= cls <= 5:
        s = ch.choose(sizes)
        if cls == 2:
            return s
        if cls == 3:
            return s - 1 if s else 0
        if cls == 4:
            return s + 1
        return ch.draw_int(0, s)
    if cls == 6:
        return ch.draw_int(2, 16)
    if cls == 11:
        return ch.draw_int(0, U64)
    return _ARG_FIXED[cls]


def _push_len(ch: Chooser, sizes: list[int], deterministic: bool, hits: Hits) -> int:
    n = _arg(ch, sizes)
    low = n & U32
    if deterministic and PUSH_DETERMINISTIC_MAX < low < PUSH_ALWAYS_FAILS:
        # Between 4 KiB and 4 MiB the kernel's atomic allocation may or may not succeed.
        hits.add("push_len")
        return n & 0xFFF
    return n


class _Builder:
    """State of one case under construction (which endpoints are closed, which keys are used).
    `hits`: the zone rules (zone.py) that changed this case, for the zone audit."""

    def __init__(self, ch: Chooser, cfg: GenConfig, hits: Hits) -> None:
        self.ch = ch
        self.cfg = cfg
        self.hits = hits
        self.layout = "own"

    def build(self) -> Case:
        ch, cfg = self.ch, self.cfg
        family = "ipv6" if ch.draw_bool(0.5) else "ipv4"
        map_type = "sockhash" if ch.draw_bool(0.5) else "sockmap"
        pairs = ch.draw_int(*cfg.pairs)
        eps = tuple(f"{side}{i}" for i in range(pairs) for side in ("c", "p"))
        n = len(eps)
        # Map size: usually exactly the endpoints; sometimes roomy, one short, or a single slot.
        size = (n, n, n, n, 16, 16, 1, max(1, n - 1), n + 1)[ch.draw_int(0, 8)]
        self.eps, self.size, self.map_type = eps, size, map_type
        inserts, keys = self._inserts(eps, size, map_type)
        self.keys = keys
        in_map = [e.ep for e in inserts] or list(eps)
        self.layout = ch.weighted(_LAYOUTS) if cfg.layouts else "own"
        events, sizes = self._events(eps, in_map)
        program = self._program(sizes, keys, size)
        if cfg.deterministic:
            events, program = zone_runs(self.ch, events, program, self.hits)
            events = events if cfg.vm else zone_splice(events, program, self.hits)
        # The traceable payload by default: the byte_provenance invariant needs it (engine/provenance.py).
        pattern = "alphabet" if ch.draw_bool(0.2) else "random"
        sockopts: tuple[SockOpt, ...] = ()
        if not cfg.deterministic and ch.draw_bool(0.2):
            sockopts = (SockOpt(ch.choose(eps), sndbuf=ch.draw_int(1, 1 << 20), rcvbuf=ch.draw_int(1, 1 << 20)),)
        case = Case(
            pairs=pairs,
            map=MapSpec(map_type, size),
            inserts=inserts,
            program=program,
            events=events,
            family=family,
            payload=Payload(pattern, ch.draw_int(0, 1 << 16)),
            sockopts=sockopts,
        )
        return zone_layout(case, self.hits) if cfg.deterministic else case

    # ---- topology ---------------------------------------------------------------------

    def _inserts(self, eps: tuple[str, ...], size: int, map_type: str) -> tuple[tuple[MapEntry, ...], list[int]]:
        ch = self.ch
        out: list[MapEntry] = []
        keys: list[int] = []
        next_key = 0
        for ep in eps:
            if not ch.draw_bool(0.85):
                continue  # an endpoint outside the map: plain TCP, and a redirect target that misses
            r = ch.draw_int(0, 19)
            if r < 16:
                key = next_key  # the usual: the next free slot
            elif r < 18:
                key = ch.draw_int(0, size + 1)  # may replace an occupied key, or be >= size (E2BIG)
            elif r < 19:
                key = U32
            else:
                key = next_key + 100 if map_type == "sockhash" else size  # sockmap: E2BIG
            next_key = max(next_key, key + 1) if key < size else next_key
            out.append(MapEntry(key, ep))
            keys.append(key)
            if ch.draw_bool(0.03):
                out.append(MapEntry((key + 1) & U32, ep))  # the same socket twice: EBUSY (spec §1.1)
        return tuple(out), keys

    # ---- events -----------------------------------------------------------------------

    def _events(self, eps: tuple[str, ...], in_map: list[str]) -> tuple[tuple[Event, ...], list[int]]:
        ch, cfg = self.ch, self.cfg
        many = cfg.many_sends and ch.draw_bool(MANY_SENDS_P)
        n_sends = ch.draw_int(*(MANY_SENDS if many else cfg.sends))
        self.send_len = MANY_SEND_LEN if many else cfg.send_len
        n_others = ch.draw_int(*cfg.others)
        # Many small sends mostly go to one socket: that is what fills a corked message's ring.
        one_sender = ch.choose(in_map) if many and ch.draw_bool(0.7) else None
        budget = cfg.max_total_bytes if cfg.deterministic else MAX_SEND * 4
        per_sender: dict[str, int] = {}
        sizes: list[int] = []
        events: list[Event] = []
        while n_sends or n_others:
            # Interleave: the share of sends left decides what comes next.
            if n_sends and (not n_others or ch.draw_int(0, n_sends + n_others - 1) < n_sends):
                n_sends -= 1
                ep = ch.choose(in_map) if ch.draw_bool(0.92) else ch.choose(eps)
                if one_sender is not None:
                    ep = one_sender
                if cfg.deterministic and per_sender.get(ep, 0) >= SENDS_PER_SENDER_MAX:
                    self.hits.add("sends_per_sender")
                    continue
                ev = self._send(ep, budget)
                if ev is None:
                    continue
                per_sender[ep] = per_sender.get(ep, 0) + 1
                n = ev.size
                budget -= n
                if n:
                    sizes.append(n)
                events.append(ev)
            else:
                n_others -= 1
                events.append(self._other(eps))
        if not sizes:
            sizes.append(ch.draw_int(1, 16))
        # The program sees sums of sends too (corked messages, leftover applies).
        if len(sizes) > 1:
            sizes.append(sizes[0] + sizes[1])
        if many:
            sizes.append(sum(sizes[:-1]))  # a cork_bytes or apply_bytes as large as everything sent
        return tuple(events), sizes

    def _send(self, ep: str, budget: int) -> Event | None:
        ch, cfg = self.ch, self.cfg
        # (A probability of 0 draws nothing: the standard mix is on the benchmarks' hot path.)
        if cfg.zero_send_p and ch.draw_bool(cfg.zero_send_p):
            n = 0
        elif cfg.big_send_p and ch.draw_bool(cfg.big_send_p):
            n = ch.draw_int(32768 - 64, 33000)
        else:
            n = ch.draw_int(*self.send_len)
        if n > budget:
            if cfg.deterministic:
                self.hits.add("total_bytes")
            if budget <= 0:
                return None
            n = budget
        kind = ch.weighted(_SEND_KINDS)
        thread = self._thread()
        hits = self.hits
        if kind == "send":
            return Send(ep, n, zone_more(self._flags(), n, "MSG_MORE", hits), thread)
        if kind == "sendmsg":
            k = ch.draw_int(1, 4)
            cuts = sorted(ch.draw_int(0, n) for _ in range(k - 1))
            iov = tuple(b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True))
            return SendMsg(ep, iov, zone_more(self._flags(), n, "MSG_MORE", hits), thread)
        if kind == "sendfile":
            return SendFile(ep, n, thread)
        n = min(n, 1 << 16)
        flags = tuple(f for f, p in (("SPLICE_F_MORE", 0.1), ("SPLICE_F_NONBLOCK", 0.1)) if ch.draw_bool(p))
        return Splice(ep, n, zone_more(flags, n, "SPLICE_F_MORE", hits), thread)

    def _thread(self) -> int | None:
        """The sender thread of the next send, by the case's layout (_LAYOUTS)."""
        if self.layout == "own":
            return None
        if self.layout == "one":
            return 0
        return self.ch.draw_int(0, FEW_THREADS - 1)

    def _flags(self) -> tuple[str, ...]:
        ch = self.ch
        if not ch.draw_bool(0.25):
            return ()
        return tuple(name for name, p in _SEND_FLAGS if ch.draw_bool(p * 4))

    def _other(self, eps: tuple[str, ...]) -> Event:
        ch = self.ch
        kind = ch.weighted(_OTHER_KINDS)
        if kind == "recv":
            n = ch.choose((65536, 1, ch.draw_int(2, 64), 0, ch.draw_int(1, 4096)))
            return Recv(ch.choose(eps), n, ch.draw_bool(0.25))
        if kind == "fionread":
            return Fionread(ch.choose(eps))
        if kind == "close":
            return Close(ch.choose(eps), ch.draw_bool(0.5))
        if kind == "shutdown":
            return Shutdown(ch.choose(eps), ch.choose(_SHUT))
        if kind == "map_delete":
            return MapDelete(self._key())
        if kind == "map_insert":
            return MapInsert(self._key(), ch.choose(eps), ch.weighted(_INSERT_FLAGS))
        if kind == "detach":
            return Detach()
        return Attach()

    def _key(self) -> int:
        """A map key: mostly one in use, else a free one, one >= the map size, or u32 max."""
        ch = self.ch
        r = ch.draw_int(0, 9)
        if r < 6 and self.keys:
            return ch.choose(self.keys)
        if r < 8:
            return ch.draw_int(0, self.size - 1)
        if r < 9:
            return self.size
        return U32

    # ---- program ----------------------------------------------------------------------

    def _program(self, sizes: list[int], keys: list[int], size: int) -> tuple[Invocation, ...]:
        ch, cfg = self.ch, self.cfg
        lists = [[self._step(sizes) for _ in range(ch.draw_int(*cfg.steps))]
                 for _ in range(ch.draw_int(*cfg.invocations))]
        if cfg.deterministic:
            zone_pushpop(lists, cfg.max_total_bytes, self.hits, cfg.vm and self.ch.draw_bool(VM_REPEATING_P))
        return tuple(Invocation(tuple(steps), ch.weighted(_VERDICTS)) for steps in lists)

    def _step(self, sizes: list[int]) -> Step:
        ch = self.ch
        kind = ch.weighted(_STEP_KINDS)
        if kind == "apply":
            return ApplyBytes(_arg(ch, sizes))
        if kind == "cork":
            return CorkBytes(_arg(ch, sizes))
        if kind == "redirect":
            r = ch.draw_int(0, 9)
            if r < 7 and self.keys:
                key = ch.choose(self.keys)
            elif r < 8:
                key = ch.draw_int(0, self.size + 1)  # a missing key, or one >= the map size
            elif r < 9:
                key = self.size
            else:
                key = U32
            return Redirect(key, ch.weighted(_REDIRECT_FLAGS))
        flags = 0 if ch.draw_bool(0.95) else ch.choose((1, U64))
        if kind == "push":
            return PushData(_arg(ch, sizes), _push_len(ch, sizes, self.cfg.deterministic, self.hits), flags)
        if kind == "pop":
            return PopData(_arg(ch, sizes), _arg(ch, sizes), flags)
        if kind == "pull":
            return PullData(_arg(ch, sizes), _arg(ch, sizes), flags)
        n = ch.draw_int(1, 16)
        return Write(ch.draw_int(0, min(sizes) + 1), ch.draw_int(0, (1 << 8 * n) - 1).to_bytes(n, "little"))


def generate(ch: Chooser, config: GenConfig = DEFAULT, hits: Hits | None = None) -> Case:
    """One case from the chooser's decisions.  `hits` collects the names of the zone rules
    that changed it (zone.py; the zone audit, bench/zone_audit.py)."""
    return _Builder(ch, config, set() if hits is None else hits).build()


def case_seed(seed: int, index: int) -> int:
    """The RandomChooser seed of case `index` of a run seeded `seed`: each case is
    reproducible on its own from (seed, index)."""
    return (seed << 32) ^ index


def random_case(seed: int, index: int = 0, config: GenConfig = DEFAULT) -> Case:
    return generate(RandomChooser(case_seed(seed, index)), config)


def standard_mix(seed: int, index: int = 0) -> Case:
    """The benchmarks' standard case: 2 pairs, 1-4 steps per run, 5 sends of 1-4000 bytes."""
    return generate(RandomChooser(case_seed(seed, index)), STANDARD_MIX)
