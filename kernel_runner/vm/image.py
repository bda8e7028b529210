"""The guest's initramfs: one uncompressed cpio (newc) per kernel and version of the worker.

What the guest needs is taken from this host, so the guest runs the very worker code the host
runs: busybox (Debian's busybox-static) for /init and its tools, Debian's python3 of the version
this runs under (3.11 on bookworm) with its standard library and the shared libraries `ldd` names,
pyelftools, the project's contract and kernel_runner packages, and the interpreter object
(bpf/build/interp.bpf.o: one object for every kernel here, its loader does no CO-RE relocation,
and bpf/interp.bpf.c is written for 6.1's verifier too).  The kernel's modules for the channel come
first in the archive (catalog.GUEST_MODULES).

The image is named by a hash of everything in it and written to a temporary file then renamed,
so a VM that boots from one never sees it change (rebuilding under a booting qemu crashed it,
../shared/notes/vm-matrix.md) and a new worker version never boots an old image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import elftools

from kernel_runner.vm.catalog import Fetched, VmError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The system's Python of the version this code runs under (a venv's python is a link to it), so
# the bytecode compiled here is the guest's too.
PY_VERSION = f"python3.{sys.version_info.minor}"
PYTHON = Path("/usr/bin") / PY_VERSION
BUSYBOX = Path("/bin/busybox")
# Parts of the standard library a worker never imports (25 of its 51 MB is config-3.11's static library).
STDLIB_SKIP = re.compile(r"^(config-3\.\d+-.*|test|idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data|"
                         r"site-packages|dist-packages|venv|__phello__)(/|$)")
# Shared objects whose Python modules need a library a guest has no use for (Tk, ncurses, sqlite, ...).
DYNLOAD_SKIP = re.compile(r"^_(tkinter|curses|curses_panel|sqlite3|dbm|gdbm|ssl|hashlib|uuid)\.|^readline\.")

# PID 1.  Written for busybox sh; its words are kept short because its output is the console log.
INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /diffuzz-modules/order); do
    insmod "/diffuzz-modules/$m" || echo "diffuzz-init: insmod $m failed"
done
ip link set lo up
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}" ;; esac; done; }
backend=$(arg diffuzz.backend)
port=""
for i in $(seq 100); do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = fuzz0 ] && port="/dev/${p##*/}"
    done
    [ -n "$port" ] && break
    sleep 0.05
done
if [ -z "$port" ]; then
    echo "diffuzz-init: no virtio-serial port named fuzz0"
    poweroff -f
fi
export PYTHONPATH=/opt/diffuzz:/opt/site PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
echo "diffuzz-init: worker on $port, backend ${backend:-interp}, kernel $(uname -r)"
# A virtio port opens once: one read-write descriptor serves as the worker's stdin and stdout.
exec 3<>"$port"
/usr/bin/python3 -m kernel_runner.worker --no-netns --backend "${backend:-interp}" <&3 >&3
echo "diffuzz-init: worker exited with status $?"
poweroff -f
"""


def image_for(kernel: Fetched) -> Path:
    """The initramfs for kernel and this checkout's worker, built when it does not exist yet."""
    for tool in (PYTHON, BUSYBOX):
        if not tool.exists():
            raise VmError(f"{tool} is missing: the guest image is built from Debian's {PY_VERSION} and "
                          "busybox-static (bash scripts/setup.sh --vm installs them)")
    entries = list(_entries(kernel))
    digest = hashlib.sha256()
    for name, source, data, mode in entries:
        digest.update(f"{name}\0{mode:o}\0".encode())
        digest.update(data if data is not None else source.read_bytes() if source else b"")
    out_dir = kernel.dir.parent.parent / "images"
    out = out_dir / f"{kernel.name}-{digest.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".cpio.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_cpio(f, entries)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in out_dir.glob(f"{kernel.name}-*.cpio"):
        if old != out and old.stat().st_mtime < out.stat().st_mtime - 24 * 3600:
            old.unlink(missing_ok=True)  # a day old: no VM can still be booting from it
    return out


Entry = tuple[str, Path | None, bytes | None, int]  # archive name, file or data, mode (with type bits)


def _entries(kernel: Fetched) -> Iterator[Entry]:
    """Every archive member, directories before what they hold, in a stable order."""
    made: set[str] = set()

    def dirs(name: str) -> Iterator[Entry]:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                made.add(d)
                yield d, None, None, stat.S_IFDIR | 0o755

    def file(name: str, source: Path, mode: int = 0o644) -> Iterator[Entry]:
        yield from dirs(name)
        yield name, source, None, stat.S_IFREG | mode

    def data(name: str, text: bytes, mode: int = 0o644) -> Iterator[Entry]:
        yield from dirs(name)
        yield name, None, text, stat.S_IFREG | mode

    def module(name: str, source: Path) -> Iterator[Entry]:
        """A .py file and its bytecode (unchecked-hash pyc: the image is rebuilt whenever a source
        changes), so the guest compiles nothing; the guest's Python is this one's version."""
        yield from file(name, source)
        text = source.read_bytes()
        with warnings.catch_warnings():  # pyelftools has an invalid escape or two: its business, not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            code = compile(text, f"/{name}", "exec", dont_inherit=True)
        flags = (1).to_bytes(4, "little")  # PEP 552: hash-based, not checked against the source
        pyc = importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(text) + marshal.dumps(code)
        head, _, tail = name.rpartition("/")
        yield from data(f"{head}/__pycache__/{tail[:-3]}.{sys.implementation.cache_tag}.pyc", pyc)

    # The kernel's modules first: everything after may depend on the channel they make.
    yield from data("diffuzz-modules/order", "".join(f"{m}\n" for m in kernel.modules).encode())
    for m in kernel.modules:
        yield from file(f"diffuzz-modules/{m}", kernel.dir / "modules" / m)
    yield from data("init", INIT.encode(), 0o755)
    yield from file("bin/busybox", BUSYBOX, 0o755)
    yield from file("usr/bin/python3", PYTHON, 0o755)
    stdlib = PYTHON.parent.parent / "lib" / PY_VERSION
    dynload: list[Path] = []
    for path in sorted(stdlib.rglob("*")):
        rel = path.relative_to(stdlib).as_posix()
        if STDLIB_SKIP.match(rel) or not path.is_file() or path.is_symlink():
            continue
        if rel.startswith("lib-dynload/"):
            if DYNLOAD_SKIP.match(path.name):
                continue
            dynload.append(path)
        yield from file(f"usr/lib/{PY_VERSION}/{rel}", path)
    for lib in _shared_libraries([PYTHON, *dynload]):
        yield from file(lib.lstrip("/"), Path(os.path.realpath(lib)), 0o755)
    site = Path(elftools.__file__).resolve().parent
    for path in sorted(site.rglob("*.py")):
        yield from module(f"opt/site/elftools/{path.relative_to(site).as_posix()}", path)
    for package in ("diffuzz/__init__.py", "diffuzz/contract", "kernel_runner"):
        top = PROJECT_ROOT / package
        for path in sorted([top] if top.is_file() else top.rglob("*.py")):
            yield from module(f"opt/diffuzz/{path.relative_to(PROJECT_ROOT).as_posix()}", path)
    from kernel_runner.interp_backend import find_object
    yield from file("opt/diffuzz/bpf/build/interp.bpf.o", find_object())


def _shared_libraries(binaries: list[Path]) -> list[str]:
    """The libraries (and the dynamic loader) that ldd resolves for binaries, by the path ld.so
    looks them up under (lib64/ld-linux..., usr/lib/x86_64-linux-gnu/...)."""
    found: set[str] = set()
    for b in binaries:
        proc = subprocess.run(["ldd", str(b)], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            m = re.search(r"(/\S+)\s+\(0x", line)
            if m:
                path = m.group(1)
                # Debian's /lib is a link to usr/lib: the guest has no such link, so the file goes
                # under usr/lib by the name ld.so looks for (its soname, not the file the link
                # names); the loader's own path, /lib64/ld-linux-x86-64.so.2, is kept: binaries name it.
                if path.startswith("/lib/"):
                    path = "/usr" + path
                found.add(path)
    if not found:
        raise VmError(f"ldd found no libraries for {binaries[0]}; is ldd (libc-bin) installed?")
    return sorted(found)


def _write_cpio(f: object, entries: list[Entry]) -> None:
    """The newc format the kernel's initramfs unpacker reads (Documentation/driver-api/early-userspace)."""
    write = f.write  # type: ignore[attr-defined]
    ino = 1

    def member(name: str, mode: int, body: bytes, mtime: int = 0) -> None:
        nonlocal ino
        namez = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, mtime, len(body), 0, 0, 0, 0, len(namez), 0)
        head = b"070701" + b"".join(b"%08x" % v for v in fields) + namez
        write(head + b"\0" * (-len(head) % 4))
        write(body + b"\0" * (-len(body) % 4))
        ino += 1

    for name, source, data, mode in entries:
        body = b"" if stat.S_ISDIR(mode) else data if data is not None else source.read_bytes() if source else b""
        # Real modification times: the standard library's .pyc files are checked against them
        # (a mismatch recompiles every module at each guest start, several seconds under TCG).
        member(name, mode, body, int(source.stat().st_mtime) if source is not None else 0)
    member("TRAILER!!!", 0, b"")


def check_tools() -> str | None:
    """None when the guest image can be built here, else what is missing."""
    missing = [str(p) for p in (PYTHON, BUSYBOX) if not p.exists()]
    if shutil.which("ldd") is None:
        missing.append("ldd")
    return f"missing {', '.join(missing)}" if missing else None


if __name__ == "__main__":  # python -m kernel_runner.vm.image NAME: build and print the image path
    from kernel_runner.vm.catalog import require
    print(image_for(require(sys.argv[1])))
