"""Every error path of the bpf_msg_* helpers (spec §6), on a real SkMsg and through whole
cases, with the u32/u64 argument cuts and wrap-arounds."""

from __future__ import annotations

import pytest
from model_builders import ApplyBytes, CorkBytes, PopData, PullData, PushData, Redirect, case, inv, rx, send

import sim
from diffuzz.contract.case import MapEntry, MapSpec
from sim.helpers import bpf_msg_pop_data, bpf_msg_pull_data, bpf_msg_push_data
from sim.page_frag import PageFrag, sk_msg_alloc
from sim.sk_msg import MAX_MSG_FRAGS, Elem, SkMsg

EINVAL = -22
ENOMEM = -12
U32 = 0xFFFF_FFFF


def msg_of(*lens: int) -> SkMsg:
    """A message whose elements have these lengths, bytes 'a', 'b', ... per element."""
    m = SkMsg()
    for i, n in enumerate(lens):
        m.elems.append(Elem(bytes([97 + i]) * n))
        m.size += n
    return m


def layout(m: SkMsg) -> list[bytes]:
    return [e.data for e in m.elems]


# ---- pull_data (§6.4) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "flags", "rc"),
    [(5, 5, 0, EINVAL), (6, 5, 0, EINVAL), (0, 11, 0, EINVAL), (10, 11, 0, EINVAL), (0, 5, 1, EINVAL),
     (0, 10, 0, 0), (9, 10, 0, 0), (U32 + 1, 5, 0, 0)],
)
def test_pull_errors(start: int, end: int, flags: int, rc: int) -> None:
    assert bpf_msg_pull_data(msg_of(10), start, end, flags) == rc


def test_pull_merges_whole_elements_only_when_needed() -> None:
    m = msg_of(4, 4, 4)
    assert bpf_msg_pull_data(m, 1, 3, 0) == 0 and layout(m) == [b"aaaa", b"bbbb", b"cccc"]
    assert bpf_msg_pull_data(m, 5, 9, 0) == 0 and layout(m) == [b"aaaa", b"bbbbcccc"]
    assert m.size == 12


# ---- push_data (§6.5) --------------------------------------------------------------------


def test_push_errors_and_noops() -> None:
    m = msg_of(10)
    assert bpf_msg_push_data(m, 0, 4, 1) == EINVAL
    assert bpf_msg_push_data(m, 11, 1, 0) == EINVAL
    assert bpf_msg_push_data(m, 3, 0, 0) == 0 and m.size == 10
    assert bpf_msg_push_data(m, 0, 5 << 20, 0) == ENOMEM  # above 4 MiB alloc_pages always fails
    assert bpf_msg_push_data(m, 0, (1 << 32) + 4, 0) == 0  # the u64 register is cut to u32: len 4
    assert m.size == 14 and m.elems[0].unk == [(0, 4)]


def test_push_layouts() -> None:
    m = msg_of(10)
    assert bpf_msg_push_data(m, 10, 2, 0) == 0  # append (allowed since 6.13)
    assert [len(x) for x in layout(m)] == [10, 2]
    m = msg_of(10)
    assert bpf_msg_push_data(m, 3, 2, 0) == 0  # split
    assert [len(x) for x in layout(m)] == [3, 2, 7]


def test_push_copy_path_when_ring_is_nearly_full() -> None:
    m = msg_of(*([2] * (MAX_MSG_FRAGS - 1)))  # space == 1, start inside an element
    assert bpf_msg_push_data(m, 1, 3, 0) == 0
    assert len(m.elems) == MAX_MSG_FRAGS - 1 and len(m.elems[0].data) == 5
    assert m.elems[0].unk == [(1, 4)]
    m = msg_of(*([2] * MAX_MSG_FRAGS))  # space == 0: copy path even at an element start
    assert bpf_msg_push_data(m, 2, 1, 0) == 0 and len(m.elems) == MAX_MSG_FRAGS
    m = msg_of(*([2] * MAX_MSG_FRAGS))
    assert bpf_msg_push_data(m, 2, U32, 0) == EINVAL  # copy + len wraps u32


# ---- pop_data (§6.6) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "ln", "flags", "rc"),
    [(0, 4, 1, EINVAL), (10, 1, 0, EINVAL), (5, 6, 0, EINVAL), (0x48A3, 0xFFFFFFFD, 0, EINVAL),
     (8, 2, 0, 0), (0, 10, 0, 0), (3, 0, 0, 0), (1, U32, 0, EINVAL)],
)
def test_pop_errors(start: int, ln: int, flags: int, rc: int) -> None:
    assert bpf_msg_pop_data(msg_of(10), start, ln, flags) == rc


def test_pop_layouts() -> None:
    m = msg_of(10)
    assert bpf_msg_pop_data(m, 3, 2, 0) == 0 and layout(m) == [b"aaa", b"aaaaa"]  # hole: split
    m = msg_of(4, 4, 4)
    assert bpf_msg_pop_data(m, 2, 7, 0) == 0 and layout(m) == [b"aa", b"ccc"]  # across elements
    m = msg_of(*([1] * 16), 5)  # no free slot: the hole is closed in a new element
    assert bpf_msg_pop_data(m, 17, 2, 0) == 0 and len(m.elems) == MAX_MSG_FRAGS and len(m.elems[-1].data) == 3
    m = msg_of(10)
    assert bpf_msg_pop_data(m, 0, 10, 0) == 0 and m.elems == [] and m.size == 0


# ---- apply, cork, redirect through whole cases (§6.1-§6.3) ------------------------------


def test_apply_and_cork_cut_to_u32() -> None:
    o = sim.run(case(inv(ApplyBytes((1 << 32) + 3)), [send(10)]))
    assert [r.size_in for r in o.runs] == [10, 7, 4, 1]
    o = sim.run(case(inv(CorkBytes(1 << 32)), [send(10)]))  # cork 0: no cork
    assert rx(o, "p0") == "ABCDEFGHIJ"


def test_redirect_errors_return_sk_drop() -> None:
    for step in (Redirect(1, flags=2), Redirect(1, flags=1 << 40), Redirect(7), Redirect(16)):
        o = sim.run(case(inv(step), [send(10)]))
        assert o.runs[0].steps[0].rc == 0, step
        assert rx(o, "p0") == "ABCDEFGHIJ", step


def test_redirect_hash_uses_keys_not_slots() -> None:
    inserts = (MapEntry(0, "c0"), MapEntry(100, "p1"))
    o = sim.run(case(inv(Redirect(100)), [send(4)], map=MapSpec("sockhash", 2), inserts=inserts))
    assert o.runs[0].steps[0].rc == 1 and rx(o, "c1") == "ABCD"


def test_last_rc_verdict_and_helper_values() -> None:
    o = sim.run(case(inv(PushData(0, 1, flags=3), verdict="last_rc"), [send(4), send(4)]))
    assert o.runs[0].steps[0].rc == EINVAL and o.runs[0].verdict == U32 - 21
    assert [e.ret for e in o.events] == ["EACCES", "EACCES"]  # any value but 1 is DROP, sticky
    o = sim.run(case(inv(verdict="last_rc"), [send(4)]))
    assert o.runs[0].verdict == 0
    o = sim.run(case(inv(PullData(0, 2), PopData(0, 2), Redirect(3), verdict="last_rc"), [send(4)]))
    assert [s.rc for s in o.runs[0].steps] == [0, 0, 1] and rx(o, "c1") == "CD"


def test_alloc_enospc_keeps_reserved_bytes() -> None:
    m = msg_of(*([1] * (MAX_MSG_FRAGS - 1)))
    got, enospc = sk_msg_alloc(m, b"x" * 40000, 0, 40000, PageFrag())
    assert (got, enospc) == (32768, True) and len(m.elems) == MAX_MSG_FRAGS
