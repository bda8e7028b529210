"""The kernels a VM can run, and fetching them into the cache.

A kernel is named by its upstream series ("6.1", "6.12", "7.2"): Debian's cloud image of that
series from the suites that carry it, newest build first.  `fetch` resolves the suite's
`linux-image-cloud-amd64` metapackage to its image package (and, from 7.x on, the
`linux-binary-*` / `linux-modules-*` packages that hold the files), downloads them with
`apt-get download` against a private apt state in the cache (the host's sources and packages are
not touched), unpacks them with `dpkg -x`, and keeps only what a guest needs: the kernel image and
the modules the guest's channel needs where they are not built in.  kernel.json records what was
fetched; it is written last, so a half-done fetch is never mistaken for a kernel.

Debian's cloud kernels build in everything sockmap needs (BPF_SYSCALL, NET_SOCK_MSG,
BPF_STREAM_PARSER, BTF, IPv6); only 6.1's virtio stack is modular (../shared/notes/vm-matrix.md).
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from kernel_runner.cache import cache_dir


class VmError(RuntimeError):
    """A VM kernel cannot be fetched, built or booted; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class KernelSpec:
    name: str
    suites: tuple[str, ...]  # the Debian suites that carry it, preferred first
    series: str  # upstream version prefix of its packages
    what: str


KERNELS: dict[str, KernelSpec] = {k.name: k for k in (
    KernelSpec("6.1", ("bookworm-security", "bookworm"), "6.1.", "Debian 12 (bookworm), the 6.1 LTS"),
    KernelSpec("6.12", ("trixie-security", "trixie"), "6.12.", "Debian 13 (trixie), the 6.12 LTS"),
    KernelSpec("7.2", ("sid",), "7.2.", "Debian unstable (sid), the newest release"),
)}

# The guest's channel (virtio-serial over PCI) and its panic device; each is loaded with what it
# depends on, where the kernel has it as a module.
GUEST_MODULES = ("virtio_pci", "virtio_console", "pvpanic_pci")

APT_SOURCES = """\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian-security trixie-security main
deb http://deb.debian.org/debian sid main
"""
APT_LISTS_MAX_AGE = 24 * 3600.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Fetched:
    """A kernel in the cache, ready to boot."""

    name: str
    dir: Path
    release: str  # what `uname -r` prints in the guest
    package: str
    version: str  # the Debian package version
    modules: tuple[str, ...]  # file names under dir/modules, in load order

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "vmlinuz"


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def spec(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except KeyError:
        raise VmError(f"unknown VM kernel {name!r}; known: {', '.join(KERNELS)}") from None


def fetched(name: str) -> Fetched | None:
    """The cached kernel of this name, or None when it has not been fetched."""
    d = kernels_dir() / spec(name).name
    try:
        meta = json.loads((d / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    if not (d / "vmlinuz").exists():
        return None
    return Fetched(name, d, meta["release"], meta["package"], meta["version"], tuple(meta["modules"]))


def require(name: str) -> Fetched:
    """The cached kernel, or VmError saying how to fetch it."""
    k = fetched(name)
    if k is None:
        raise VmError(f"VM kernel {name} is not fetched; run: diffuzz kernels fetch {name}")
    return k


def fetch(name: str, progress: Progress = lambda _msg: None, refresh: bool = False) -> Fetched:
    """Download and unpack kernel `name` into the cache (again when refresh or a newer build exists)."""
    s = spec(name)
    apt = _Apt(cache_dir() / "apt", progress)
    apt.update(force=refresh)
    version = apt.newest("linux-image-cloud-amd64", s)
    image = apt.depends(f"linux-image-cloud-amd64={version}", r"linux-image-\S+")
    old = fetched(name)
    if old is not None and old.version == version and old.package == image[0] and not refresh:
        progress(f"{name}: {image[0]} {version} is already fetched")
        return old
    packages = image + apt.depends(f"{image[0]}={version}", r"linux-(binary|modules)-\S+")
    root = kernels_dir()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".fetch-{name}-") as tmp:
        work = Path(tmp)
        progress(f"{name}: apt-get download {' '.join(packages)} ({version})")
        apt.download([f"{p}={version}" for p in packages], work)
        tree = work / "tree"
        for deb in sorted(work.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpack {deb.name}")
        out = work / "kernel"
        (out / "modules").mkdir(parents=True)
        release, vmlinuz, moddir = _locate(tree, s)
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        modules = _copy_guest_modules(moddir, out / "modules")
        meta = {"name": name, "release": release, "package": image[0], "version": version,
                "modules": modules, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        final = root / name
        if final.exists():
            # Images built from the old files are keyed by their hash (image.py), never reused.
            shutil.rmtree(final)
        os.replace(out, final)
    progress(f"{name}: fetched {release} into {final}")
    k = fetched(name)
    assert k is not None
    return k


def _locate(tree: Path, s: KernelSpec) -> tuple[str, Path, Path]:
    """(release, vmlinuz, modules dir) in an unpacked image; 6.x keeps /boot and /lib/modules,
    7.x keeps everything under /usr/lib/modules/RELEASE."""
    for moddir in sorted([*tree.glob("lib/modules/*"), *tree.glob("usr/lib/modules/*")]):
        release = moddir.name
        for vmlinuz in (tree / "boot" / f"vmlinuz-{release}", moddir / "vmlinuz"):
            if vmlinuz.exists():
                return release, vmlinuz, moddir
    raise VmError(f"the {s.name} packages hold no vmlinuz and modules directory; Debian's layout changed?")


def _modinfo_depends(path: Path) -> list[str]:
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".modinfo")
        fields = sec.data().split(b"\0") if sec is not None else []
    for field in fields:
        if field.startswith(b"depends="):
            return [d for d in field[len(b"depends="):].decode().split(",") if d]
    return []


def _copy_guest_modules(moddir: Path, out: Path) -> list[str]:
    """GUEST_MODULES and what they depend on, decompressed (busybox insmod takes plain .ko), in an
    order where each module comes after its dependencies.  A module that is absent is built in."""
    index: dict[str, Path] = {}
    for ko in moddir.rglob("*.ko*"):
        base = ko.name.split(".ko")[0]
        index[base.replace("-", "_")] = ko
    order: list[str] = []

    def add(mod: str) -> None:
        mod = mod.replace("-", "_")
        if mod in order or mod not in index:
            return
        src = index[mod]
        dst = out / f"{mod}.ko"
        data = src.read_bytes()
        if src.name.endswith(".xz"):
            data = lzma.decompress(data)
        elif src.name.endswith(".zst"):
            raise VmError(f"{src.name} is zstd-compressed; the standard library cannot unpack it")
        dst.write_bytes(data)
        for dep in _modinfo_depends(dst):
            add(dep)
        order.append(mod)

    for mod in GUEST_MODULES:
        add(mod)
    return [f"{m}.ko" for m in order]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise VmError(f"cannot {what}: {argv[0]} is missing (a Debian system with apt is needed)") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise VmError(f"cannot {what}: {' '.join(argv[:3])}... failed: {' / '.join(tail)}")
    return proc.stdout


class _Apt:
    """apt-get and apt-cache against a private state directory: Debian's suites, nothing installed."""

    def __init__(self, root: Path, progress: Progress) -> None:
        self.root = root
        self.progress = progress
        for d in ("lists/partial", "archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "sources.list").write_text(APT_SOURCES)
        self.opts = [
            "-o", f"Dir::Etc::sourcelist={root / 'sources.list'}", "-o", "Dir::Etc::sourceparts=/nonexistent",
            "-o", f"Dir::State::Lists={root / 'lists'}", "-o", f"Dir::Cache={root}",
            "-o", f"Dir::Cache::archives={root / 'archives'}", "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root", "-q",
        ]

    def update(self, force: bool) -> None:
        stamp = self.root / "lists" / ".updated"
        if not force and stamp.exists() and time.time() - stamp.stat().st_mtime < APT_LISTS_MAX_AGE:
            return
        self.progress("apt-get update (Debian bookworm, trixie, sid; private lists in the cache)")
        _run(["apt-get", *self.opts, "update"], "read Debian's package lists (is deb.debian.org reachable?)")
        stamp.touch()

    def newest(self, package: str, s: KernelSpec) -> str:
        """The version of package in s's suites whose upstream version is in s's series."""
        out = _run(["apt-cache", *self.opts, "madison", package], f"look up {package}")
        found: dict[str, list[str]] = {}
        for line in out.splitlines():
            cols = [c.strip() for c in line.split("|")]
            if len(cols) == 3 and cols[1].startswith(s.series):
                suite = cols[2].split()[1].split("/")[0] if len(cols[2].split()) > 1 else ""
                found.setdefault(suite, []).append(cols[1])
        for suite in s.suites:
            if found.get(suite):
                return max(found[suite], key=_version_key)
        raise VmError(f"no {s.series}x {package} in Debian {', '.join(s.suites)}: that kernel has left "
                      "Debian; choose another (diffuzz kernels)")

    def depends(self, package: str, pattern: str) -> list[str]:
        out = _run(["apt-cache", *self.opts, "show", "--no-all-versions", package], f"look up {package}")
        for line in out.splitlines():
            if line.startswith("Depends:"):
                names = [d.strip().split()[0] for d in line[len("Depends:"):].replace("|", ",").split(",")]
                return [n for n in names if re.fullmatch(pattern, n)]
        return []

    def download(self, packages: list[str], into: Path) -> None:
        _run(["apt-get", *self.opts, "download", *packages], f"download {' '.join(packages)}", cwd=into)


def _version_key(v: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", v)]


def save_profile(name: str, profile: dict[str, object]) -> None:
    """Keep the profile a kernel's probes chose (diffuzz/engine/probes.py) beside it, for listings."""
    k = require(name)
    tmp = k.dir / "profile.json.tmp"
    tmp.write_text(json.dumps({**profile, "release": k.release, "version": k.version}, indent=1) + "\n")
    os.replace(tmp, k.dir / "profile.json")


def saved_profile(name: str) -> dict[str, object] | None:
    """The profile saved for a fetched kernel of this build, or None."""
    k = fetched(name)
    if k is None:
        return None
    try:
        saved = json.loads((k.dir / "profile.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("version") == k.version else None
