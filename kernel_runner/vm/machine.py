"""One qemu VM as a KernelPool worker: the guest runs kernel_runner/worker.py, the channel is a
virtio-serial port.

The host listens on a unix socket and qemu connects to it as the port's backend (so no case can
be written before the guest's side exists); once the guest's worker says ready, the pool treats
the socket like a local worker's pipes: one case frame in, one outcome frame out (worker.py).

qemu runs under software emulation (no KVM here: ../shared/notes/vm-matrix.md), one vCPU pinned
to the worker's CPU, `-no-reboot` with `panic=-1 oops=panic`: a guest panic or oops ends qemu at
once, the channel reaches EOF, and the pool turns the case into a crash outcome with the console's
last lines (report()).  A hung guest is killed by the pool's deadline like a hung local worker.
qemu is started in a session of its own: a signal to the campaign's process group reaches the
engine, which stops the pool; one sent to qemu alone ends that VM and, like a worker that gets it,
asks the campaign to stop (pool.py STOP_SIGNALS).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kernel_runner.backend import KernelUnsupported
from kernel_runner.vm.catalog import Fetched, VmError, require
from kernel_runner.vm.image import image_for
from kernel_runner.worker_process import CLOSE_TIMEOUT, WorkerProcess

QEMU = "qemu-system-x86_64"
MEMORY_MB = 512  # ~330 MiB RSS per VM measured; the initramfs (~40 MB) lives in it
# A guest runs the socket loop about 8x slower than the host under TCG (vm-matrix.md): the pool
# stretches each case's deadline by this much.
SLOWDOWN = 8.0
BOOT_TIMEOUT = 180.0  # boot ~3 s, the worker's start ~5 s alone; two VMs booting on a loaded 2-core host
CONSOLE_TAIL = 400  # lines of the console kept in a crash or hang outcome (an OOM report passes 150)
# What a guest kernel prints when it dies or wedges (panic=-1 turns an oops into a panic).
# Searched only in what the console printed after the worker started (boot prints "watchdog:" lines).
PANIC = re.compile(r"Kernel panic|BUG:|Oops|general protection fault|invoked oom-killer|Out of memory|RIP:|"
                   r"watchdog: |hung_task|Call Trace:")
WORKER_STARTED = "diffuzz-init: worker on"


@dataclass
class VmKernel:
    """A fetched kernel, its image, and a directory for this pool's sockets and console logs."""

    kernel: Fetched
    image: Path
    run_dir: Path

    @classmethod
    def open(cls, name: str) -> VmKernel:
        if shutil.which(QEMU) is None:
            raise KernelUnsupported(f"{QEMU} is missing: bash scripts/setup.sh --vm installs qemu "
                                    "(Debian's qemu-system-x86 from bookworm-backports)")
        try:
            kernel = require(name)
            image = image_for(kernel)
        except VmError as e:
            raise KernelUnsupported(str(e)) from None
        return cls(kernel, image, Path(tempfile.mkdtemp(prefix=f"diffuzz-vm-{name}-")))

    @property
    def label(self) -> str:
        return f"vm:{self.kernel.name}"

    def close(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


class VmWorker(WorkerProcess):
    """The pool's side of one VM (same fields and protocol as a local worker)."""

    _count = 0

    def __init__(self, vm: VmKernel, backend: str, cpu: int | None) -> None:
        VmWorker._count += 1
        n = VmWorker._count
        self.vm = vm
        self.cpu = cpu
        self.console = vm.run_dir / f"console-{n}.log"
        self.qemu_log = vm.run_dir / f"qemu-{n}.log"
        path = vm.run_dir / f"channel-{n}.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.conn: socket.socket | None = None
        argv = [
            QEMU, "-accel", "tcg", "-m", str(MEMORY_MB), "-smp", "1", "-nodefaults", "-display", "none",
            "-no-reboot", "-kernel", str(vm.kernel.vmlinuz), "-initrd", str(vm.image),
            "-append", f"console=ttyS0 panic=-1 oops=panic rdinit=/init diffuzz.backend={backend}",
            "-serial", f"file:{self.console}",
            "-device", "virtio-serial-pci", "-chardev", f"socket,id=fz,path={path}",
            "-device", "virtserialport,chardev=fz,name=fuzz0",
        ]
        pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        with open(self.qemu_log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, preexec_fn=pin)
        self._pool_side(-1, -1)  # the socket's descriptors once qemu connects (wait_ready)

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + max(timeout, BOOT_TIMEOUT)
        self.listener.settimeout(10.0)
        while self.conn is None:
            try:
                self.conn, _ = self.listener.accept()
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    why = self.reap()
                    raise KernelUnsupported(f"qemu did not start ({why}): {self._qemu_said()}") from None
        self.listener.close()
        # Two descriptors for the one socket: the pool's selector watches reading and writing
        # separately, by descriptor.
        self.rfd = self.conn.fileno()
        self.wfd = os.dup(self.rfd)
        try:
            super().wait_ready(end - time.monotonic())
        except KernelUnsupported as e:
            raise KernelUnsupported(f"{self.vm.label}: {e}; the guest's console:\n{self.console_tail(30)}") from None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # qemu's own session: nothing else is in it
        except ProcessLookupError:
            pass
        self.reap()

    def reap(self) -> str:
        """Close the channel and end qemu: a guest never sees EOF on its port, so the VM is
        thrown away (SIGTERM, then SIGKILL) rather than asked to stop."""
        if self.conn is not None:
            os.close(self.wfd)
            self.conn.close()
            self.conn = None
        self.listener.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=CLOSE_TIMEOUT)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        code = self.proc.returncode
        return f"qemu exit status {code}" if code >= 0 else f"qemu killed by {signal.Signals(-code).name}"

    # ---- what a dead or hung VM leaves behind ------------------------------------------------

    def console_tail(self, lines: int = CONSOLE_TAIL) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _qemu_said(self) -> str:
        try:
            return " / ".join(self.qemu_log.read_text(errors="replace").strip().splitlines()[-3:]) or "nothing"
        except OSError:
            return "nothing"

    def stopped_by_signal(self) -> bool:
        """qemu exits 0 when a signal ends it; it says so on stderr."""
        return "terminating on signal" in self._qemu_said()

    def report(self) -> dict[str, str]:
        """Notes for the case this VM was running when it died or hung: the console's last lines,
        and `crash` (the first line that shows the guest kernel dying) when there is one."""
        tail = self.console_tail()
        notes = {"console": tail, "vm": self.vm.label}
        lines = tail.splitlines()
        started = max((i for i, line in enumerate(lines) if WORKER_STARTED in line), default=-1)
        for line in lines[started + 1:]:
            if PANIC.search(line):
                notes["crash"] = line.strip()
                break
        return notes

