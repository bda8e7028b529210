"""The bpf() syscall layer and the ELF loader, on the real kernel and the real interpreter object.

Socket work happens in a child process inside a network namespace it creates itself
(`in_netns`), so the host's network is never touched.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from kernel_runner import bpf_sys as b
from kernel_runner import script
from kernel_runner.elf_loader import BpfObject, ElfError, MapDef
from kernel_runner.interp_backend import CLANG_FLAGS, find_object
from tests.kernel.netns_child import in_netns, require_bpf

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _bpf_available() -> None:
    require_bpf()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        c = socket.create_connection(lst.getsockname())
        p, _ = lst.accept()
    for s in (c, p):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, p


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# mov r0, 1; exit  — the smallest valid SK_MSG program (SK_PASS)
PASS_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 1) + struct.pack("<BBhi", 0x95, 0, 0, 0)


# --------------------------------------------------------------------------------------
# bpf_sys: maps


def test_map_create_rejects_zero_entries_with_einval() -> None:
    with pytest.raises(OSError) as e:
        b.map_create(b.BPF_MAP_TYPE_ARRAY, 4, 8, 0, name="zero")
    assert e.value.errno == errno.EINVAL
    assert "BPF_MAP_CREATE" in str(e.value)


def test_array_map_update_lookup_and_mmap_share_memory() -> None:
    with b.map_create(b.BPF_MAP_TYPE_ARRAY, 4, 12, 3, b.BPF_F_MMAPABLE, name="arr") as m:
        view = m.mmap()
        view[16:20] = b"wxyz"  # value 1 starts at 16: values are rounded up to 8 bytes
        assert m.lookup(struct.pack("<I", 1)) == b"wxyz" + bytes(8)
        m.update(struct.pack("<I", 2), b"0123456789ab")
        assert view[32:44] == b"0123456789ab"
        with pytest.raises(OSError) as e:
            m.lookup(struct.pack("<I", 3))
        assert e.value.errno == errno.ENOENT
    assert m.fd == -1


def test_mmap_needs_mmapable_flag() -> None:
    with b.map_create(b.BPF_MAP_TYPE_ARRAY, 4, 8, 1) as m, pytest.raises(ValueError, match="BPF_F_MMAPABLE"):
        m.mmap()


def test_u32_fast_paths_return_negative_errno() -> None:
    def body() -> tuple[int, ...]:
        c, p = tcp_pair()
        with c, p, b.map_create(b.BPF_MAP_TYPE_SOCKMAP, 4, 4, 2, name="sm") as m:
            return (
                m.update_u32(2, c.fileno()),  # key beyond max_entries
                m.delete_u32(0),  # empty slot
                m.update_u32(0, c.fileno()),
                m.update_u32(0, p.fileno(), b.BPF_NOEXIST),
                m.delete_u32(0),
                m.update_u32(1, 9999),  # not an fd
            )

    assert in_netns(body) == (-errno.E2BIG, -errno.EINVAL, 0, -errno.EEXIST, 0, -errno.EBADF)


def test_sockhash_insert_delete() -> None:
    def body() -> tuple[int, ...]:
        c, p = tcp_pair()
        with c, p, b.map_create(b.BPF_MAP_TYPE_SOCKHASH, 4, 4, 1, name="sh") as m:
            return (m.update_u32(0xFFFFFFFF, c.fileno()), m.update_u32(7, p.fileno()),
                    m.delete_u32(0xFFFFFFFF), m.delete_u32(0xFFFFFFFF))

    # a sockhash of max_entries 1 takes any u32 key, but only one at a time
    assert in_netns(body) == (0, -errno.E2BIG, 0, -errno.ENOENT)


def test_closed_objects_report_ebadf() -> None:
    m = b.map_create(b.BPF_MAP_TYPE_SOCKMAP, 4, 4, 1)
    p = b.prog_load(b.BPF_PROG_TYPE_SK_MSG, PASS_INSNS, expected_attach_type=b.BPF_SK_MSG_VERDICT)
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(2)]  # would reuse the numbers we free
    try:
        m.close()
        m.close()  # idempotent
        p.close()
        assert m.fd == -1 and p.fd == -1
        assert m.delete_u32(0) == -errno.EBADF
        assert m.update_u32(0, 1) == -errno.EBADF
        with b.map_create(b.BPF_MAP_TYPE_SOCKMAP, 4, 4, 1) as live:
            assert p.attach_rc(live.fd) == -errno.EBADF
    finally:
        for fd in held:
            os.close(fd)


# --------------------------------------------------------------------------------------
# bpf_sys: programs


def test_prog_load_failure_carries_the_verifier_log() -> None:
    exit_only = struct.pack("<BBhi", 0x95, 0, 0, 0)  # exit with R0 never written
    with pytest.raises(b.VerifierError) as e:
        b.prog_load(b.BPF_PROG_TYPE_SK_MSG, exit_only, expected_attach_type=b.BPF_SK_MSG_VERDICT, name="bad")
    assert e.value.errno == errno.EACCES
    assert "R0 !read_ok" in e.value.log
    assert "R0 !read_ok" in str(e.value)


def test_attach_detach_rc() -> None:
    with (b.prog_load(b.BPF_PROG_TYPE_SK_MSG, PASS_INSNS, expected_attach_type=b.BPF_SK_MSG_VERDICT) as p,
          b.map_create(b.BPF_MAP_TYPE_SOCKMAP, 4, 4, 1) as m):
        assert p.detach_rc(m.fd) == -errno.ENOENT  # nothing attached yet
        assert p.attach_rc(m.fd) == 0
        assert p.detach_rc(m.fd) == 0
        assert p.detach_rc(m.fd) == -errno.ENOENT
        assert p.attach_rc(-1) == -errno.EBADF
        with pytest.raises(OSError) as e:
            p.detach(m.fd)
        assert e.value.errno == errno.ENOENT


def test_no_fd_leak_over_many_objects() -> None:
    before = open_fds()
    for _ in range(300):
        with b.map_create(b.BPF_MAP_TYPE_ARRAY, 4, 8, 4, b.BPF_F_MMAPABLE) as m:
            m.mmap()[0] = 1
        with b.prog_load(b.BPF_PROG_TYPE_SK_MSG, PASS_INSNS, expected_attach_type=b.BPF_SK_MSG_VERDICT):
            pass
        with pytest.raises(OSError):
            b.map_create(b.BPF_MAP_TYPE_ARRAY, 4, 8, 0)
    assert open_fds() == before


# --------------------------------------------------------------------------------------
# elf_loader, on the real interpreter object


@pytest.fixture(scope="module")
def interp_obj() -> BpfObject:
    return BpfObject.open(str(find_object()))


def test_btf_map_definitions_are_read(interp_obj: BpfObject) -> None:
    maps = interp_obj.maps
    assert maps["sockmap"] == MapDef("sockmap", b.BPF_MAP_TYPE_SOCKMAP, 4, 4, 1, 0)
    assert maps["sockhash"] == MapDef("sockhash", b.BPF_MAP_TYPE_SOCKHASH, 4, 4, 1, 0)
    assert maps["script"] == MapDef("script", b.BPF_MAP_TYPE_ARRAY, 4, script.SCRIPT_SIZE, 1, b.BPF_F_MMAPABLE)
    assert maps["records"] == MapDef("records", b.BPF_MAP_TYPE_ARRAY, 4, script.RECORDS_SIZE, 1, b.BPF_F_MMAPABLE)
    assert interp_obj.license == "GPL"
    (prog,) = interp_obj.programs.values()
    assert (prog.name, prog.section, prog.prog_type, prog.expected_attach_type) == (
        "interp", "sk_msg", b.BPF_PROG_TYPE_SK_MSG, b.BPF_SK_MSG_VERDICT)
    assert sorted(name for _, name in prog.map_relocs) == ["records", "script", "sockhash", "sockmap"]


def test_relocation_binds_each_ld_imm64_to_its_map_fd(interp_obj: BpfObject) -> None:
    (prog,) = interp_obj.programs.values()
    fds = {"sockmap": 101, "sockhash": 102, "script": 103, "records": 104}
    insns = prog.relocate(fds)
    assert len(insns) == len(prog.insns)
    for index, name in prog.map_relocs:
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, index * 8)
        assert code == 0x18  # ld_imm64
        assert regs >> 4 == b.BPF_PSEUDO_MAP_FD
        assert regs & 0x0F == prog.insns[index * 8 + 1] & 0x0F  # dst_reg kept
        assert imm == fds[name]
        assert insns[index * 8 + 12 : index * 8 + 16] == bytes(4)  # second half: imm 0
    patched = {i for i, _ in prog.map_relocs}
    for i in range(len(insns) // 8):
        if i not in patched:
            assert insns[i * 8 : i * 8 + 8] == prog.insns[i * 8 : i * 8 + 8]


def test_load_with_overrides_and_reuse(interp_obj: BpfObject) -> None:
    with b.map_create(b.BPF_MAP_TYPE_ARRAY, 4, script.RECORDS_SIZE, 1, b.BPF_F_MMAPABLE, "records") as mine:
        with interp_obj.load(max_entries={"sockmap": 7, "sockhash": 9}, reuse={"records": mine}) as loaded:
            assert loaded.maps["sockmap"].max_entries == 7
            assert loaded.maps["sockhash"].max_entries == 9
            assert loaded.maps["records"] is mine
            assert loaded.program.fd >= 0
        assert mine.fd >= 0  # a reused map is not the loaded object's to close
        assert loaded.maps["sockmap"].fd == -1
    with b.map_create(b.BPF_MAP_TYPE_ARRAY, 4, 8, 1) as wrong, pytest.raises(ValueError, match="does not match"):
        interp_obj.load(reuse={"records": wrong})


def test_failed_load_leaks_nothing(interp_obj: BpfObject) -> None:
    before = open_fds()
    for _ in range(20):
        with pytest.raises(OSError) as e:
            interp_obj.load(max_entries={"sockhash": 0})  # a sockhash of 0 entries: EINVAL
        assert e.value.errno == errno.EINVAL
    assert open_fds() == before


def _clang_object(tmp_path: Path, source: str) -> str:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed")
    src = tmp_path / "t.bpf.c"
    src.write_text(source)
    obj = tmp_path / "t.bpf.o"
    subprocess.run([clang, *CLANG_FLAGS, "-c", str(src), "-o", str(obj)], check=True)
    return str(obj)


def test_global_data_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = _clang_object(tmp_path, """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
int counter;
SEC("sk_msg") int prog(struct sk_msg_md *msg) { return ++counter; }
char _license[] SEC("license") = "GPL";
""")
    with pytest.raises(ElfError, match="only map references are supported"):
        BpfObject.open(path)


def test_not_an_object_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\x7fELF not really")
    with pytest.raises(ElfError, match=str(junk)):
        BpfObject.open(str(junk))
    with pytest.raises(ElfError, match="cannot read"):
        BpfObject.open(str(tmp_path / "missing.o"))
