"""Run a test body in a forked child inside a fresh network namespace, for tests that open
sockets and BPF objects in the test process itself (the pool-based tests get their netns from
the workers).  The host's network is never touched."""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from kernel_runner import bpf_sys
from kernel_runner.netns import enter_new_netns


def require_bpf() -> None:
    """Skip, with the reason, unless this process can create a sockmap."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_BPF, CAP_NET_ADMIN) for bpf() and unshare(CLONE_NEWNET)")
    try:
        bpf_sys.map_create(bpf_sys.BPF_MAP_TYPE_SOCKMAP, 4, 4, 1).close()
    except OSError as e:
        pytest.skip(f"this kernel cannot create a sockmap: {e}")


def in_netns(fn: Callable[[], Any]) -> Any:
    """fn() in a forked child inside a fresh network namespace (lo up); its result, or
    pytest.fail with the child's traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            enter_new_netns()
            payload = pickle.dumps(("ok", fn()))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
            code = 1
        with os.fdopen(w, "wb") as f:
            f.write(payload)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        pytest.fail(f"in netns child:\n{value}")
    return value
