"""A private network namespace for the calling process, with loopback up.

Every worker runs its cases inside its own namespace: TIME_WAIT sockets, port numbers and
anything a case leaves behind stay there, and the host's network is never touched.  Only
the standard library is used (no `ip` binary), so the same code runs inside a small VM.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

from kernel_runner.backend import KernelUnsupported

NOT_ROOT = "diffuzz needs root (CAP_SYS_ADMIN, CAP_BPF, CAP_NET_ADMIN): run as root"

CLONE_NEWNET = 0x4000_0000  # <linux/sched.h>; os.unshare only exists from Python 3.12 on
SIOCGIFFLAGS = 0x8913  # <linux/sockios.h>
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name[IFNAMSIZ], then the ifr_flags member of the union


def enter_new_netns() -> None:
    """unshare(CLONE_NEWNET) for the calling thread, then bring `lo` up.

    Call it before the process starts any thread: a new thread copies the namespaces of the
    thread that creates it, so every later thread (the fresh send threads) shares this one.
    """
    if os.geteuid() != 0:
        raise KernelUnsupported(NOT_ROOT)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise KernelUnsupported(NOT_ROOT)
        raise KernelUnsupported(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} (kernel without CONFIG_NET_NS?)")
    set_loopback_up()


def set_loopback_up() -> None:
    """SIOCGIFFLAGS / SIOCSIFFLAGS on `lo`: a new namespace starts with loopback down.

    Bringing `lo` up also configures 127.0.0.1/8 and ::1 (the IPv6 address appears only if
    IPv6 is enabled in the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            got = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
            flags = _IFREQ.unpack(got)[1]
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))
        except OSError as e:
            if e.errno == errno.EPERM:
                raise KernelUnsupported(NOT_ROOT) from None
            raise KernelUnsupported(f"cannot bring lo up in the new network namespace: {e.strerror}") from None


def netns_id() -> str:
    """The namespace the calling thread is in, as /proc shows it ("net:[4026532…]")."""
    return os.readlink("/proc/thread-self/ns/net")
