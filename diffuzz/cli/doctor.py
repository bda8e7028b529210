"""What this machine can do for diffuzz, and how to fix what it cannot.

This is the one place that decides "this machine cannot do X, because Y": `diffuzz doctor`
prints the checks, and tests/conftest.py skips `@pytest.mark.kernel` tests with the same
reasons (cilium/ebpf's ErrNotSupported idea: one helper, the feature, the reason).

Each probe is cheap and leaves nothing behind: every fd it opens is closed, every temporary
file removed.  Only the bcc probe is slow (a compile, about a second), so it runs in a child
process and only when asked for.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import gzip
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kernel_runner.pidns import probe_pid_namespace

ROOT = Path(__file__).resolve().parents[2]  # the checkout: diffuzz/cli/doctor.py -> ../../..
BPF_DIR = ROOT / "bpf"

# Capability bits (include/uapi/linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39

# include/uapi/linux/bpf.h
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_SOCKMAP = 15
_NR_BPF = {"x86_64": 321, "aarch64": 280}

KERNEL_CONFIG = ("CONFIG_BPF_SYSCALL", "CONFIG_NET_SOCK_MSG", "CONFIG_BPF_STREAM_PARSER")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found
    fix: str = ""  # how to fix it, when not ok
    required: bool = True  # the main job (fuzz with confirmation) needs it


# --------------------------------------------------------------------------------------
# Probes: each returns None when the feature works, else the reason it does not.


def _cap_eff() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def probe_root() -> str | None:
    """None when the process may create BPF maps and programs, attach them, and make network namespaces
    (unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN): root, or the three capabilities."""
    caps = _cap_eff()
    need = {"CAP_SYS_ADMIN": CAP_SYS_ADMIN, "CAP_BPF": CAP_BPF, "CAP_NET_ADMIN": CAP_NET_ADMIN}
    missing = [name for name, bit in need.items() if not caps >> bit & 1]
    if not missing:
        return None  # root, or the capabilities without root: either is enough
    return f"not root (euid {os.geteuid()}) and missing {', '.join(missing)}"


def _map_create_ctypes(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """BPF_MAP_CREATE through a raw syscall; the fd, or -errno."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return -errno.ENOSYS
    attr = (ctypes.c_uint32 * 32)(map_type, key_size, value_size, max_entries)  # the rest reads as zero
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(BPF_MAP_CREATE), ctypes.byref(attr),
                      ctypes.c_uint(ctypes.sizeof(attr)))
    return int(fd) if fd >= 0 else -ctypes.get_errno()


def _map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """0 when a map of this type can be created (and is closed again), else -errno.

    Uses kernel_runner.bpf_sys when it is there (the same code path the runner uses),
    else ctypes directly."""
    try:
        from kernel_runner import bpf_sys
    except ImportError:
        bpf_sys = None
    if bpf_sys is not None and hasattr(bpf_sys, "map_create"):
        try:
            bpf_sys.map_create(map_type, key_size, value_size, max_entries).close()
        except OSError as e:
            return -(e.errno or errno.EINVAL)
        return 0
    fd = _map_create_ctypes(map_type, key_size, value_size, max_entries)
    if fd < 0:
        return fd
    os.close(fd)
    return 0


def _errno_text(rc: int) -> str:
    return f"{errno.errorcode.get(-rc, str(-rc))} ({os.strerror(-rc)})"


@functools.cache
def probe_bpf() -> str | None:
    """None when bpf(BPF_MAP_CREATE) of a one-entry array map works."""
    rc = _map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    if rc == 0:
        return None
    if rc == -errno.ENOSYS:
        return "no bpf() syscall (ENOSYS): the kernel was built without CONFIG_BPF_SYSCALL"
    if rc in (-errno.EPERM, -errno.EACCES):
        return f"bpf() refused: {_errno_text(rc)}; run as root (or with CAP_BPF and CAP_NET_ADMIN)"
    return f"bpf(BPF_MAP_CREATE, ARRAY) failed: {_errno_text(rc)}"


@functools.cache
def probe_sockmap() -> str | None:
    """None when a BPF_MAP_TYPE_SOCKMAP can be created (the kernel has NET_SOCK_MSG and a stream parser)."""
    reason = probe_bpf()
    if reason:
        return reason
    rc = _map_create(BPF_MAP_TYPE_SOCKMAP, 4, 4, 1)
    if rc == 0:
        return None
    return (f"no sockmap: BPF_MAP_CREATE(SOCKMAP) failed with {_errno_text(rc)}; the kernel needs "
            "CONFIG_NET_SOCK_MSG and CONFIG_BPF_STREAM_PARSER")


def kernel_config() -> tuple[str, dict[str, str]] | None:
    """(where it was read, {option: value}) from /proc/config.gz or /boot/config-$(uname -r)."""
    sources = [(Path("/proc/config.gz"), True), (Path(f"/boot/config-{os.uname().release}"), False)]
    for path, zipped in sources:
        try:
            raw = gzip.decompress(path.read_bytes()) if zipped else path.read_bytes()
        except OSError:
            continue
        values = {}
        for line in raw.decode(errors="replace").splitlines():
            name, sep, value = line.partition("=")
            if sep and name in KERNEL_CONFIG:
                values[name] = value
        return str(path), values
    return None


def clang_bpf_flags() -> list[str]:
    """Flags clang needs for the BPF target on Debian (asm/types.h lives under the multiarch dir)."""
    multiarch = f"/usr/include/{platform.machine()}-linux-gnu"
    return ["-target", "bpf", "-O2", "-g"] + (["-I", multiarch] if os.path.isdir(multiarch) else [])


_SK_MSG_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("sk_msg") int prog(struct sk_msg_md *msg) { return SK_PASS; }
char _license[] SEC("license") = "GPL";
"""


@functools.cache
def probe_clang() -> str | None:
    """None when clang compiles an SK_MSG program for the BPF target."""
    clang = shutil.which("clang")
    if clang is None:
        return "clang not found"
    with tempfile.TemporaryDirectory(prefix="diffuzz-doctor-") as tmp:
        src, obj = Path(tmp, "p.c"), Path(tmp, "p.o")
        src.write_text(_SK_MSG_C)
        try:
            proc = subprocess.run([clang, *clang_bpf_flags(), "-c", str(src), "-o", str(obj)],
                                  capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"clang failed to run: {e}"
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:200])
            return f"clang cannot build an SK_MSG program for -target bpf: {first}"
    return None


def kernel_build_dir() -> Path:
    return Path(f"/lib/modules/{os.uname().release}/build")


_BCC_PROBE = """
import sys
try:
    from bcc import BPF
except Exception as e:
    print(f"import bcc failed: {e}"); sys.exit(3)
try:
    BPF(text="int prog(struct sk_msg_md *msg) { return 1; }")
except Exception as e:
    print(f"bcc cannot compile an SK_MSG program: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    sys.exit(4)
"""


@functools.cache
def probe_bcc() -> str | None:
    """None when bcc imports and compiles an SK_MSG program (it needs kernel headers)."""
    if importlib.util.find_spec("bcc") is None:
        return "bcc is not importable (apt-get install python3-bpfcc; the venv needs --system-site-packages)"
    if not kernel_build_dir().exists():
        return f"{kernel_build_dir()} is missing: bcc has no kernel headers"
    try:
        proc = subprocess.run([sys.executable, "-c", _BCC_PROBE], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "bcc compile did not finish in 300 s"
    if proc.returncode != 0:
        said = proc.stdout.strip() or proc.stderr.strip()
        return said.splitlines()[-1] if said else f"the bcc probe exited with {proc.returncode}"
    return None


def interp_objects() -> list[Path]:
    """The compiled BPF objects: bpf/build/*.o (bpf/Makefile), or next to the sources."""
    return sorted(BPF_DIR.glob("build/*.o")) + sorted(BPF_DIR.glob("*.o"))


def probe_interp() -> str | None:
    """None when the interpreter program's object is built and newer than its sources."""
    sources = sorted(BPF_DIR.glob("*.c")) + sorted(BPF_DIR.glob("*.h"))
    objects = interp_objects()
    if not objects:
        return "no compiled BPF object in bpf/" if sources else "bpf/ has no sources yet"
    newest_src = max((p.stat().st_mtime for p in sources), default=0.0)
    stale = [p.name for p in objects if p.stat().st_mtime < newest_src]
    if stale:
        return f"{', '.join(stale)} older than its sources"
    return None


def probe_vm() -> str | None:
    """None when VMs can run here: qemu 10 or newer, the guest image's tools, the smoke test's kernel."""
    import shutil

    from kernel_runner.vm import catalog, image

    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return "qemu-system-x86_64 is missing (bash scripts/setup.sh --vm installs it)"
    tools = image.check_tools()
    if tools:
        return f"the guest image cannot be built: {tools} (bash scripts/setup.sh --vm)"
    if catalog.fetched(SMOKE_KERNEL) is None:
        return f"VM kernel {SMOKE_KERNEL} is not fetched (diffuzz kernels fetch {SMOKE_KERNEL})"
    return None


SMOKE_KERNEL = "6.12"  # the kernel `setup.sh --test` fetches for the VM smoke test

# The probes the test suite uses to skip, by feature name (tests/conftest.py).
FEATURES: dict[str, Callable[[], str | None]] = {
    "root": probe_root,
    "bpf": probe_bpf,
    "sockmap": probe_sockmap,
    "clang": probe_clang,
    "bcc": probe_bcc,
    "interp": probe_interp,
    "vm": probe_vm,
}


def missing(*features: str) -> str | None:
    """The reason the first of `features` is unavailable on this machine, or None if all work."""
    for name in features:
        reason = FEATURES[name]()
        if reason:
            return f"{name}: {reason}"
    return None


# --------------------------------------------------------------------------------------
# The doctor


_SETUP = "bash scripts/setup.sh"


def profile_check(forced: str | None, usable: bool) -> Check:
    """The kernel profile the probes choose (diffuzz/engine/probes.py), each probe's result, and which
    probe disagrees with which profile.  Not required: fuzz runs with the nearest profile."""
    if not usable:
        return Check("kernel profile", False, "not probed: the kernel side cannot run here",
                     "fix the lines above first", required=False)
    from diffuzz.engine.probes import probe_and_choose
    from kernel_runner import local

    choice = probe_and_choose(local.run, forced)
    found = "; ".join(f"{r.probe}: {r.detail}" for r in choice.probes)
    fix = ("a new kernel behaviour: triage it (docs/kernel-notes.md), add it to sim/profile.py with its probe, "
           "or name the profile with --kernel-profile")
    return Check("kernel profile", choice.exact, f"{choice.profile.name} ({choice.how()}) — {found}", fix,
                 required=False)


def run_checks(kernel_profile: str | None = None) -> list[Check]:
    """Every check; the last one probes the kernel's behaviour profile when the kernel side can run."""
    checks: list[Check] = []
    release = os.uname().release
    root = probe_root()
    checks.append(Check("root / capabilities", root is None, "CAP_SYS_ADMIN, CAP_BPF, CAP_NET_ADMIN" if root is None
                        else root, "run diffuzz as root (sudo), or grant CAP_SYS_ADMIN, CAP_BPF and CAP_NET_ADMIN"))
    bpf = probe_bpf()
    checks.append(Check("bpf() syscall", bpf is None, "BPF_MAP_CREATE of an array map works" if bpf is None else bpf,
                        "run as root on a kernel with CONFIG_BPF_SYSCALL=y"))
    pidns = probe_pid_namespace()
    checks.append(Check("PID namespace", pidns is None, "the initial one (BPF thread ids match gettid())"
                        if pidns is None else pidns, "run the container with --pid=host (docs/long-runs.md, Docker)"))
    sockmap = probe_sockmap()
    config = kernel_config()
    if config is not None:
        where, values = config
        for option in KERNEL_CONFIG:
            value = values.get(option, "not set")
            checks.append(Check(f"kernel {option}", value == "y", f"{value} ({where})",
                                f"boot a kernel built with {option}=y"))
    else:
        # No config file: infer from behaviour; a SOCKMAP only exists with NET_SOCK_MSG and a stream parser.
        inferred = "inferred from behaviour (no /proc/config.gz or /boot/config)"
        checks.append(Check("kernel CONFIG_BPF_SYSCALL", bpf is None or "ENOSYS" not in bpf,
                            f"{'y' if bpf is None else 'unknown'}, {inferred}",
                            "boot a kernel built with CONFIG_BPF_SYSCALL=y"))
        checks.append(Check("kernel CONFIG_NET_SOCK_MSG, CONFIG_BPF_STREAM_PARSER", sockmap is None,
                            f"{'y (a SOCKMAP can be created)' if sockmap is None else sockmap}, {inferred}",
                            "boot a kernel built with CONFIG_NET_SOCK_MSG=y and CONFIG_BPF_STREAM_PARSER=y"))
    checks.append(Check("sockmap", sockmap is None, "BPF_MAP_CREATE of a SOCKMAP works" if sockmap is None
                        else sockmap, "run as root on a kernel with CONFIG_NET_SOCK_MSG=y"))
    clang = probe_clang()
    checks.append(Check("clang -target bpf", clang is None,
                        f"{shutil.which('clang')} builds an SK_MSG object" if clang is None else clang,
                        f"apt-get install clang llvm libbpf-dev (or {_SETUP})"))
    build = kernel_build_dir()
    target = os.path.realpath(build) if build.exists() else ""
    checks.append(Check("kernel headers for bcc", build.exists(),
                        f"{build} -> {target}" if build.exists() else f"{build} is missing (kernel {release})",
                        f"{_SETUP} (links Debian's linux-headers-*-amd64 there; see docs)"))
    bcc = probe_bcc()
    checks.append(Check("bcc (confirmation backend)", bcc is None, "compiles an SK_MSG program" if bcc is None else bcc,
                        f"apt-get install python3-bpfcc and {_SETUP}"))
    elf = importlib.util.find_spec("elftools") is not None
    checks.append(Check("pyelftools (ELF loader)", elf, "importable" if elf else "not importable",
                        f"{_SETUP} (pip install -e .)"))
    interp = probe_interp()
    objects = ", ".join(str(p.relative_to(ROOT)) for p in interp_objects())
    checks.append(Check("interpreter program built", interp is None, objects if interp is None else interp,
                        f"make -C bpf (or {_SETUP})"))
    vm = probe_vm()
    checks.append(Check("VMs (--kernel vm:NAME, diffuzz matrix)", vm is None,
                        f"qemu, the guest image's tools and vm:{SMOKE_KERNEL} are here (diffuzz kernels lists all)"
                        if vm is None else vm, "bash scripts/setup.sh --vm", required=False))
    usable = root is None and bpf is None and pidns is None and sockmap is None and elf and interp is None
    checks.append(profile_check(kernel_profile, usable))
    return checks


def main_job_ready(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


def print_checks(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.text import Text

    con = Console(highlight=False, soft_wrap=True)
    width = max(len(c.name) for c in checks)
    for c in checks:
        line = Text()
        line.append("ok      " if c.ok else "missing ", style="green" if c.ok else "bold red")
        line.append(f"{c.name:<{width}}  {c.detail}")
        if not c.ok:
            line.append(f"  → fix: {c.fix}", style="yellow")
        con.print(line)
    ready = main_job_ready(checks)
    con.print(Text("ready: this machine can run the kernel side" if ready else
                   "not ready: fix the lines marked missing", style="bold green" if ready else "bold red"))
