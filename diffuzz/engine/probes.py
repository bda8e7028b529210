"""Which kernel profile is this kernel? Small probe cases decide, like libbpf's feature probes.

The release string cannot tell kernels apart (two 6.18.44 builds differ), so each profile
behaviour (sim/profile.py) has a probe: a tiny case whose outcome depends on it.  A probe runs
once on the kernel; the model runs it under every on/off combination of the behaviours it
covers, and the combinations that agree with the kernel decide them.  No expected value is
written here by hand: the model's rules are the prediction, the kernel picks among them.  A
probe the kernel answers with none of the variants is reported as such (a warning, never a
guess), and the nearest profile is used.

`choose_profile` turns the probe results (and an optional --kernel-profile) into a
ProfileChoice, which every command prints, records and passes to the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sim
from diffuzz.contract.case import Case, case_from_dict
from diffuzz.contract.outcome import Outcome
from diffuzz.engine.compare import compare
from sim.profile import (
    FIONREAD_INGRESS_MSG,
    FIONREAD_TCP_INQ,
    MEMCOPY_RETURNS_COPIED,
    PROFILES,
    PUSH_COPIES_TO_TASK_FRAG,
    REFERENCE,
    STALE_SK_REDIR,
    TCP_BPF_SENDPAGE,
    Profile,
    get_profile,
    with_behaviours,
)

KernelRun = Callable[[Case], Outcome]

# The set-up of the spec's worked examples: two pairs, every endpoint in a sockmap.
_BASE: dict[str, Any] = {
    "format": 1, "family": "ipv4", "map": {"type": "sockmap", "size": 16}, "pairs": 2,
    "inserts": [{"key": 0, "ep": "c0"}, {"key": 1, "ep": "p0"}, {"key": 2, "ep": "c1"}, {"key": 3, "ep": "p1"}],
    "fresh_thread": True, "payload": {"pattern": "alphabet", "seed": 0},
}


@dataclass(frozen=True)
class Probe:
    name: str
    behaviours: tuple[str, ...]  # what it decides
    case: Case
    what: str  # the observable, for people


def _probe_case(name: str, program: list[dict[str, Any]], events: list[dict[str, Any]]) -> Case:
    return case_from_dict({**_BASE, "name": f"probe_{name}", "program": program, "events": events})


PROBES: tuple[Probe, ...] = (
    Probe(
        "stale_redirect",
        (STALE_SK_REDIR,),
        # W10: run 0 redirects 2 bytes to p1 (egress: c1 reads them); runs 1 and 2 of the same
        # syscall call no helper: they redirect too only where the stale target counts.
        _probe_case("stale_redirect",
                    [{"steps": [{"op": "apply_bytes", "bytes": 2}, {"op": "redirect", "key": 3, "flags": 0}],
                      "verdict": "PASS"},
                     {"steps": [], "verdict": "PASS"}],
                    [{"op": "send", "ep": "c0", "len": 6, "flags": []}]),
        "where runs 1 and 2 deliver: c1 (redirect) or p0 (pass)",
    ),
    Probe(
        "fionread",
        (FIONREAD_INGRESS_MSG, FIONREAD_TCP_INQ),
        # 3 bytes on p0's ingress_msg, then 5 plain TCP bytes: FIONREAD(p0) reads 5 (TCP only),
        # 3 (ingress_msg only) or 8 (both).
        _probe_case("fionread",
                    [{"steps": [{"op": "redirect", "key": 1, "flags": 1}], "verdict": "PASS"},
                     {"steps": [], "verdict": "PASS"}],
                    [{"op": "send", "ep": "c0", "len": 3, "flags": []},
                     {"op": "send", "ep": "c0", "len": 5, "flags": []},
                     {"op": "fionread", "ep": "p0"}]),
        "FIONREAD(p0) with 3 bytes on ingress_msg and 5 in TCP's receive queue",
    ),
    Probe(
        "push_frag",
        (PUSH_COPIES_TO_TASK_FRAG,),
        # corpus/seeds/T02_shared_thread_frag_continues.json: two 20000-byte PASS sends from thread 0.
        # The second send's first element starts where the thread's frag stands: after send 0's
        # 20000 bytes (TCP took page references: window 12768), or after TCP's copy of them too
        # (20000 more bytes, the rest of the page and 7232 of a new one: window 20000).
        _probe_case("push_frag",
                    [{"steps": [], "verdict": "PASS"}],
                    [{"op": "send", "ep": "c0", "len": 20000, "flags": [], "thread": 0},
                     {"op": "send", "ep": "c0", "len": 20000, "flags": [], "thread": 0}]),
        "the window of the second send from one thread after a PASS push: 12768 or 20000",
    ),
    Probe(
        "sendpage",
        (TCP_BPF_SENDPAGE,),
        # W19 in small: sendfile of 5000 bytes, PASS.  One tcp_bpf_sendmsg run on the batch
        # (5000 bytes, window 5000), or tcp_bpf_sendpage's run per pipe buffer (4096, then 904,
        # each an sg.copy element with an empty window).
        _probe_case("sendpage",
                    [{"steps": [], "verdict": "PASS"}],
                    [{"op": "sendfile", "ep": "c0", "len": 5000}]),
        "the runs of a 5000-byte sendfile: one on 5000 bytes, or one per page with empty windows",
    ),
    Probe(
        "memcopy_return",
        (MEMCOPY_RETURNS_COPIED,),
        # corpus/kernel-bugs/K4_partial_push_then_coalesce_send_returns_0.json: a one-byte send
        # whose copy fails after a coalescing alloc returns 0 (err kept) or ENOSPC (the copy's).
        # Only where the push leaves the frag alone: with push_copies_to_task_frag (6.1) TCP's copy
        # of "A" moves the frag, "C" does not coalesce, the copy cannot fail, and both variants
        # agree (run_probes judges this probe again under what push_frag decided).
        _probe_case("memcopy_return",
                    [{"steps": [{"op": "apply_bytes", "bytes": 1}], "verdict": "PASS"},
                     {"steps": [{"op": "cork_bytes", "bytes": 2}], "verdict": "PASS"}],
                    [{"op": "send", "ep": "c0", "len": 2, "flags": [], "thread": 0},
                     {"op": "send", "ep": "c0", "len": 1, "flags": [], "thread": 0}]),
        "what a send returns when sk_msg_memcopy_from_iter fails after a coalescing alloc: 0 or ENOSPC",
    ),
)


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    found: Mapping[str, bool | None]  # behaviour -> present, absent, or None (undecided)
    detail: str  # how it was decided, or why not
    # False when the kernel matched no variant (or could not run the probe); a behaviour left
    # undecided by a probe that matched is one this kernel does not show (6.1 has no ingress_msg
    # FIONREAD, so whether TCP's queue is added to it cannot be seen): no disagreement.
    matched: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"probe": self.probe, "found": dict(self.found), "detail": self.detail}


def _variant_name(combo: Mapping[str, bool]) -> str:
    return ", ".join(f"{'+' if on else '-'}{b}" for b, on in combo.items())


def run_probe(probe: Probe, kernel: KernelRun | Outcome, base: Profile = REFERENCE) -> ProbeResult:
    """One probe: the kernel's outcome (or the kernel, to run it) against the model under each
    variant of its behaviours, the others as in `base`."""
    undecided = dict.fromkeys(probe.behaviours)
    k = kernel if isinstance(kernel, Outcome) else kernel(probe.case)
    if "error" in k.notes or k.hang:
        why = k.notes.get("error") or "the probe case hung"
        return ProbeResult(probe.name, undecided, f"the kernel could not run the probe: {why}", matched=False)
    matches: list[dict[str, bool]] = []
    first_diff = ""
    for values in itertools.product((True, False), repeat=len(probe.behaviours)):
        combo = dict(zip(probe.behaviours, values, strict=True))
        diffs = compare(k, sim.run(probe.case, with_behaviours(base, combo)))
        if not diffs:
            matches.append(combo)
        elif not first_diff:
            d = diffs[0]
            first_diff = f"under {_variant_name(combo)}: {d.path}: kernel {d.kernel!r}, model {d.model!r}"
    if not matches:
        return ProbeResult(probe.name, undecided, f"matches no variant of {', '.join(probe.behaviours)} "
                                                  f"({probe.what}); first difference {first_diff}", matched=False)
    found: dict[str, bool | None] = {}
    for b in probe.behaviours:
        seen = {m[b] for m in matches}
        found[b] = seen.pop() if len(seen) == 1 else None
    return ProbeResult(probe.name, found, "kernel agrees with " + " or ".join(_variant_name(m) for m in matches))


def run_probes(kernel: KernelRun, base: Profile = REFERENCE) -> tuple[ProbeResult, ...]:
    """Every probe, each case run once on the kernel.  A probe's case shows more than its own
    behaviour (the FIONREAD a redirect probe reads depends on fionread_*), so the probes are
    judged again under what the others decided, until nothing changes: on a kernel far from the
    reference (Debian's 6.1, 6.12) a probe judged under the reference alone matches no variant."""
    outcomes = [kernel(p.case) for p in PROBES]
    results = tuple(run_probe(p, k, base) for p, k in zip(PROBES, outcomes, strict=True))
    for _ in PROBES:
        decided = {b: on for r in results for b, on in r.found.items() if on is not None}
        again = tuple(run_probe(p, k, with_behaviours(base, {b: on for b, on in decided.items()
                                                              if b not in p.behaviours}))
                      for p, k in zip(PROBES, outcomes, strict=True))
        if again == results:
            break
        results = again
    return results


@dataclass(frozen=True)
class ProfileChoice:
    """The profile the model runs under, and why."""

    profile: Profile
    probes: tuple[ProbeResult, ...] = ()  # empty when nothing was probed
    forced: bool = False
    # (behaviour, what the probe found, what the profile says) where they differ or the probe could not tell
    disagreements: tuple[tuple[str, bool | None, bool], ...] = field(default=())

    @property
    def exact(self) -> bool:
        """The probes ran and every behaviour they decided is the profile's."""
        return bool(self.probes) and not self.disagreements

    def how(self) -> str:
        """How the profile was chosen, in a few words (the first line of fuzz, reproduce)."""
        if not self.probes:
            return "forced with --kernel-profile, not probed" if self.forced else "not probed (no kernel)"
        if self.forced:
            return "forced with --kernel-profile" + ("" if self.exact else f"; {self.disagreement_text()}")
        if self.exact:
            return "probed: matches"
        return f"probed: matches no profile, using the nearest; {self.disagreement_text()}"

    def disagreement_text(self) -> str:
        parts = []
        for b, got, want in self.disagreements:
            probe = next(r for r in self.probes if b in r.found)
            seen = "undecided" if got is None else ("present" if got else "absent")
            parts.append(f"probe {probe.probe} finds {b} {seen}, the profile has it "
                         f"{'present' if want else 'absent'}")
        return "; ".join(parts)

    def line(self) -> str:
        return f"kernel profile {self.profile.name} ({self.how()})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.profile.name, "behaviours": sorted(self.profile.behaviours), "forced": self.forced,
                "exact": self.exact, "how": self.how(), "probes": [r.to_dict() for r in self.probes]}


def _disagreements(profile: Profile, probes: tuple[ProbeResult, ...]) -> tuple[tuple[str, bool | None, bool], ...]:
    out = []
    for r in probes:
        for b, got in r.found.items():
            if got != profile.has(b) and (got is not None or not r.matched):
                out.append((b, got, profile.has(b)))
    return tuple(out)


def choose_profile(probes: tuple[ProbeResult, ...], forced: str | None = None) -> ProfileChoice:
    """The forced profile, else the one whose behaviours the probes match (the nearest when none
    does: fewest disagreements, the reference profile first on a tie).  UnknownProfile for a
    forced name that is not a profile."""
    if forced is not None:
        profile = get_profile(forced)
        return ProfileChoice(profile, probes, True, _disagreements(profile, probes))
    if not probes:
        return ProfileChoice(REFERENCE)
    ranked = sorted(PROFILES.values(), key=lambda p: (len(_disagreements(p, probes)), p is not REFERENCE))
    best = ranked[0]
    return ProfileChoice(best, probes, False, _disagreements(best, probes))


def probe_and_choose(kernel: KernelRun, forced: str | None = None) -> ProfileChoice:
    """Probe the kernel (a few ms) and choose; the unknown-name check comes first, so a typo
    costs no kernel run."""
    if forced is not None:
        get_profile(forced)
    return choose_profile(run_probes(kernel), forced)


def model_for(choice: ProfileChoice) -> Callable[[Case], Outcome]:
    """sim.run bound to the chosen profile: the model every command compares with."""
    profile = choice.profile

    def run(case: Case) -> Outcome:
        return sim.run(case, profile)

    return run

