"""Kernel behaviour profiles: the rules of the model that differ between kernels.

Two builds that both report 6.18.44 differ in how a redirect target left on a message is
treated, so the model cannot be one kernel: every rule that differs is a named Behaviour (with
the kernel change behind it and the case that shows it), and a Profile is a named set of them.
`sim.run(case, profile)` takes the profile as part of its input; nothing here is global state.

Which profile a running kernel has is decided by probing it (diffuzz/engine/probes.py, libbpf's
feature-probe idea): the release string cannot tell the two 6.18.44 builds apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Behaviour:
    """One rule that some kernels follow and others do not."""

    name: str
    rule: str  # what the model does when the kernel has it
    change: str  # the release or commit that introduced (or removed) it
    evidence: str  # the cases and notes that show it


@dataclass(frozen=True)
class Profile:
    """A named set of behaviours: the kernel the model predicts."""

    name: str
    behaviours: frozenset[str]
    description: str

    def has(self, behaviour: str) -> bool:
        return behaviour in self.behaviours


STALE_SK_REDIR = "stale_sk_redir"
FIONREAD_INGRESS_MSG = "fionread_ingress_msg"
FIONREAD_TCP_INQ = "fionread_tcp_inq"
MEMCOPY_RETURNS_COPIED = "memcopy_returns_copied"
PUSH_COPIES_TO_TASK_FRAG = "push_copies_to_task_frag"
TCP_BPF_SENDPAGE = "tcp_bpf_sendpage"

BEHAVIOURS: dict[str, Behaviour] = {b.name: b for b in (
    Behaviour(
        STALE_SK_REDIR,
        "a run that returns SK_PASS redirects when msg->sk_redir is set, also when an earlier run on the "
        "same struct set it (the tmp message of one syscall, or the persistent cork struct): "
        "sk_psock_map_verd(SK_PASS, msg->sk_redir) reads the field without knowing which run wrote it "
        "(spec §1.5, §4.1)",
        "the original sk_msg code (4.17, tcp_bpf/skmsg); still in Debian 6.12.117 and in 6.18.44-fc-v657/v669. "
        "Absent on 6.18.44-fc-v1045: there a stale target is never used (msg->sk_redir counts only in the run "
        "that set it). That change is not public: it is not in Debian's 6.12.107..6.12.117 sources, and no "
        "upstream commit was found (docs/kernel-notes.md N12)",
        "corpus/seeds/W10_stale_redirect_apply.json, W23_failed_redirect_stale_target.json; "
        "docs/kernel-notes.md N12",
    ),
    Behaviour(
        FIONREAD_INGRESS_MSG,
        "FIONREAD on a socket with a psock reports the bytes on its ingress_msg queue (tcp_bpf_ioctl); "
        "without it, FIONREAD is TCP's tcp_inq only and ingress_msg bytes are invisible (spec §7.4)",
        "upstream 'bpf, sockmap: Fix FIONREAD for sockmap' (stable 6.12.75 and 6.18.14 per spec §7.4; listed in "
        "Debian's 6.12.85-1 changelog); 6.1.x and 6.12 <= 6.12.74 lack it",
        "corpus/seeds/W12_read_order_ingress_fionread.json; spec §7.4",
    ),
    Behaviour(
        FIONREAD_TCP_INQ,
        "with fionread_ingress_msg: FIONREAD also adds tcp_inq (the TCP receive queue) when the socket has "
        "no SK_SKB verdict program, which is always the case here (tcp_bpf_ioctl)",
        "upstream 'bpf, sockmap: Account for receive queue in FIONREAD without a verdict program' (7.2.13; "
        "Debian 6.12.115, in linux-source-6.12 6.12.117's tcp_bpf.c); both 6.18.44 builds lack it",
        "spec §7.4 (7.2.13, selftest 'sockmap no_verdict fionread'); docs/kernel-notes.md N13",
    ),
    Behaviour(
        MEMCOPY_RETURNS_COPIED,
        "sk_msg_memcopy_from_iter returns the bytes it copied (or -ENOSPC when its first step meets sg.end), "
        "and tcp_bpf_sendmsg adds that count to copied and jumps to out_err keeping err (sk_msg_alloc's "
        "result, 0 after a coalescing alloc) when it fails; without it, the copy returns its last chunk's "
        "length, copied grows by what was reserved, and a failed copy's -ENOSPC is the syscall's error",
        "in Debian's linux-source-7.2 7.2.13 skmsg.c / tcp_bpf.c and observed on 6.18.44-fc-v669; not in "
        "6.12.117 (docs/kernel-notes.md N14). Both 6.18.44 profiles have it (fc-v1045 by its release, not "
        "measured)",
        "corpus/seeds/T06_coalesce_after_partial_push_returns_0.json; docs/kernel-notes.md N14",
    ),
    Behaviour(
        PUSH_COPIES_TO_TASK_FRAG,
        "tcp_bpf_push (PASS, egress redirect) hands each element to a tcp_sendmsg_locked that has no "
        "MSG_SPLICE_PAGES branch, so TCP copies the bytes into the sending thread's page frag "
        "(sk_page_frag = current->task_frag, the frag sk_msg_alloc takes from) right after the message's "
        "own bytes, as a plain send does, and the element's page reference is put at once; without it, "
        "TCP takes page references to the elements and the frag does not move",
        "Debian 6.1.184 (6.1.187-1 upload) took 'tcp_bpf: Inline do_tcp_sendpages as it's now a wrapper "
        "around tcp_sendmsg' and 'tcp_bpf, smc, tls, espintcp, siw: Reduce MSG_SENDPAGE_NOTLAST usage' "
        "without 'tcp: Support MSG_SPLICE_PAGES' (6.5); so 6.1.184.. only. 6.12.118, 7.2.13 and 6.18.44 "
        "splice the pages (tcp_sendmsg_locked sets zc for MSG_SPLICE_PAGES)",
        "corpus/seeds/T02_shared_thread_frag_continues.json (run 1 window 20000 on 6.1.192, 12768 on "
        "6.18.44), corpus/kernel-bugs/K4_partial_push_then_coalesce_*.json (no K4 on 6.1.192); "
        "docs/kernel-notes.md N19",
    ),
    Behaviour(
        TCP_BPF_SENDPAGE,
        "sendfile and splice on a socket with a msg program call tcp_bpf_sendpage once per pipe buffer "
        "(<= 4096 bytes; generic_splice_sendpage -> pipe_to_sendpage): each page is an sg.copy element "
        "by reference (empty window, a pull always copies it), the cork accounting and the program run "
        "per page, with no sk_err check and copied returned unclamped (sim/sendpage.py); without it, "
        "splice_to_socket makes one tcp_bpf_sendmsg call per batch of up to 16 buffers (spec §8.1)",
        "every kernel before 6.5, where 'tcp_bpf: Convert tcp_bpf_sendpage() to use MSG_SPLICE_PAGES' and "
        "'splice, net: Use sendmsg(MSG_SPLICE_PAGES) rather than ->sendpage()' removed it; Debian 6.1.192 "
        "still has it. Absent from 6.12.118, 7.2.13, 6.18.44",
        "corpus/seeds/W19_sendfile_batching.json (25 runs on 6.1.192, 2 on 6.18.44); spec §8.2, App. B Q3; "
        "corpus/matrix/S01-S10; docs/kernel-notes.md N19",
    ),
)}

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(
        "6.18.44-v657",
        frozenset({STALE_SK_REDIR, FIONREAD_INGRESS_MSG, MEMCOPY_RETURNS_COPIED}),
        "Linux 6.18.44 as first measured (build fc-v657; fc-v669 probes the same): the spec's kernel",
    ),
    Profile(
        "6.18.44-v1045",
        frozenset({FIONREAD_INGRESS_MSG, MEMCOPY_RETURNS_COPIED}),
        "Linux 6.18.44 build fc-v1045: a redirect target left on the message by an earlier run is ignored",
    ),
)}

# Debian's kernels that run in VMs (kernel_runner/vm/catalog.py), each chosen by its probes
# inside the VM (diffuzz kernels fetch NAME) and read off its source (docs/kernel-notes.md N17, N19).
PROFILES.update({p.name: p for p in (
    Profile(
        "7.2.13",
        frozenset({STALE_SK_REDIR, FIONREAD_INGRESS_MSG, FIONREAD_TCP_INQ, MEMCOPY_RETURNS_COPIED}),
        "Debian's 7.2.13 (sid): FIONREAD counts ingress_msg and TCP's queue; the copy returns what it copied",
    ),
    Profile(
        "6.12.118",
        frozenset({STALE_SK_REDIR, FIONREAD_INGRESS_MSG, FIONREAD_TCP_INQ}),
        "Debian's 6.12.118 (trixie): FIONREAD counts ingress_msg and TCP's queue; the copy returns its last chunk",
    ),
    Profile(
        "6.1.192",
        frozenset({STALE_SK_REDIR, PUSH_COPIES_TO_TASK_FRAG, TCP_BPF_SENDPAGE}),
        "Debian's 6.1.192 (bookworm): FIONREAD is TCP's only; the copy returns its last chunk; a push "
        "copies the bytes into the sending thread's page frag; sendfile/splice go through sendpage, per page",
    ),
)})

# The profile the spec, the seeds' "expected" blocks and every corpus kernel.json recorded before
# profiles existed were written against.
REFERENCE = PROFILES["6.18.44-v657"]


class UnknownProfile(ValueError):
    pass


def get_profile(name: str) -> Profile:
    """The profile of this name; UnknownProfile names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(f"unknown kernel profile {name!r}; known: {', '.join(PROFILES)}") from None


def with_behaviours(base: Profile, present: dict[str, bool]) -> Profile:
    """base with each named behaviour switched on or off (for probing: the model under each variant)."""
    have = set(base.behaviours)
    for name, on in present.items():
        if name not in BEHAVIOURS:
            raise UnknownProfile(f"unknown behaviour {name!r}; known: {', '.join(BEHAVIOURS)}")
        (have.add if on else have.discard)(name)
    flags = ",".join(f"{'+' if on else '-'}{n}" for n, on in sorted(present.items()))
    return Profile(f"{base.name}[{flags}]", frozenset(have), f"{base.name} with {flags}")
