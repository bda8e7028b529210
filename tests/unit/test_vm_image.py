"""The guest initramfs writer (kernel_runner/vm/image.py): the newc archive the kernel unpacks."""

from __future__ import annotations

import io
import stat
from pathlib import Path

from kernel_runner.vm.image import _write_cpio


def _read_newc(blob: bytes) -> list[tuple[str, int, int, bytes]]:
    """(name, mode, mtime, data) per member: the format of the kernel's init/initramfs.c."""
    out, pos = [], 0
    while True:
        assert blob[pos:pos + 6] == b"070701"
        fields = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = blob[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = blob[pos: pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(blob)
            return out
        out.append((name, fields[1], fields[5], data))


def test_members_round_trip_with_modes_times_and_padding(tmp_path: Path) -> None:
    src = tmp_path / "lib.so"
    src.write_bytes(b"x" * 5)
    entries = [("usr", None, None, stat.S_IFDIR | 0o755), ("usr/lib.so", src, None, stat.S_IFREG | 0o755),
               ("init", None, b"#!/bin/sh\n", stat.S_IFREG | 0o755)]
    buf = io.BytesIO()
    _write_cpio(buf, entries)
    members = _read_newc(buf.getvalue())
    assert [(n, m) for n, m, _t, _d in members] == [(n, m) for n, _s, _d, m in entries]
    assert members[1][3] == b"xxxxx" and members[2][3] == b"#!/bin/sh\n"
    # A file's time is its source's (stdlib .pyc files are checked against it); data has none.
    assert members[1][2] == int(src.stat().st_mtime) and members[2][2] == 0
