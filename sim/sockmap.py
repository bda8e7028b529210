"""net/core/sock_map.c: the sockmap / sockhash, its links to psocks, and the program slot
(spec §1.1, §9.1, §9.4)."""

from __future__ import annotations

from sim.psock import Psock, sk_psock_drop
from sim.tcp import ESTABLISHED, Sock

E2BIG = 7
ENOENT = 2
EINVAL = 22
EBUSY = 16
EEXIST = 17
EOPNOTSUPP = 95

BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4


class SockMap:
    """A BPF_MAP_TYPE_SOCKMAP (key < max_entries, slots) or SOCKHASH (up to max_entries keys).

    `prog` is the map's msg_parser slot: attach and detach change only this; a socket's
    psock keeps the program it captured when it was linked (§1.1, §9.4)."""

    __slots__ = ("hash", "max_entries", "prog", "slots")

    def __init__(self, map_type: str, max_entries: int) -> None:
        self.hash = map_type == "sockhash"
        self.max_entries = max_entries
        self.slots: dict[int, Sock] = {}
        self.prog = False

    def lookup(self, key: int) -> Sock | None:
        """__sock_map_lookup_elem / __sock_hash_lookup_elem (the redirect helpers)."""
        return self.slots.get(key)

    def update(self, key: int, sk: Sock, flags: int) -> int:
        """bpf_map_update_elem from user space: 0 or -errno, checks in kernel order."""
        if flags & BPF_F_LOCK:
            return -EINVAL  # map_update_elem: BPF_F_LOCK needs a spin lock in the value
        if sk.state != ESTABLISHED:
            return -EOPNOTSUPP  # sock_map_sk_state_allowed: ESTABLISHED or LISTEN only
        if flags > BPF_EXIST:
            return -EINVAL
        if not self.hash and key >= self.max_entries:
            return -E2BIG
        # sock_map_link: a psock that already has a msg program refuses a second one.
        psock = sk.psock
        if psock is not None and self.prog and psock.prog:
            return -EBUSY
        if psock is not None and self.prog:
            # sock_map_link has run: psock_set_prog gave the socket's existing psock the map's program
            # and tcp_bpf_update_proto switched it to config TX.  The checks below can still fail the
            # update (EEXIST, ENOENT, a full sockhash), but sk_psock_put only drops the reference:
            # the program stays (docs/kernel-notes.md N16).  A psock made just now is dropped again.
            psock.prog = True
        old = self.slots.get(key)
        if old is not None and flags == BPF_NOEXIST:
            return -EEXIST
        if old is None and flags == BPF_EXIST:
            return -ENOENT
        if self.hash and old is None and len(self.slots) >= self.max_entries:
            return -E2BIG  # sock_hash_alloc_elem: the table is full and this key is new
        if psock is None:
            psock = Psock(sk)
            sk.psock = psock
        if self.prog:
            psock.prog = True  # psock_set_prog: config TX from now on
        psock.links += 1
        self.slots[key] = sk
        if old is not None:
            sock_map_unref(old)  # replacing a key unlinks the old socket (§9.1)
        return 0

    def delete(self, key: int) -> int:
        """bpf_map_delete_elem: sockmap EINVAL for a bad or empty slot, sockhash ENOENT."""
        if not self.hash and key >= self.max_entries:
            return -EINVAL
        sk = self.slots.pop(key, None)
        if sk is None:
            return -ENOENT if self.hash else -EINVAL
        sock_map_unref(sk)
        return 0

    def remove_sock(self, sk: Sock) -> None:
        """sock_map_close / sock_map_remove_links: the socket leaves every slot."""
        for key in [k for k, v in self.slots.items() if v is sk]:
            del self.slots[key]
            sock_map_unref(sk)

    def attach(self) -> int:
        """BPF_PROG_ATTACH (no BPF_F_REPLACE): psock_set_prog always succeeds."""
        self.prog = True
        return 0

    def detach(self) -> int:
        """BPF_PROG_DETACH: psock_replace_prog(pprog, NULL, prog) -> ENOENT if not attached."""
        if not self.prog:
            return -ENOENT
        self.prog = False
        return 0


def sock_map_unref(sk: Sock) -> None:
    """Drop one link; the last one destroys the psock (§9.1)."""
    psock = sk.psock
    if psock is None:
        return
    psock.links -= 1
    if psock.links <= 0:
        sk_psock_drop(psock)
