"""Shared test set-up: the one place that decides "this machine cannot do X", and Hypothesis profiles.

Kernel tests carry `@pytest.mark.kernel`.  They run when the machine can do BPF sockmap work and
skip otherwise, with the reason diffuzz.cli.doctor gives (the same reason `diffuzz doctor` prints):

    @pytest.mark.kernel                         # root, a working bpf() syscall, a sockmap
    @pytest.mark.kernel(needs=("bcc",))         # ... and more: "clang", "bcc", "interp"

The probes are cheap (a map created and closed) and cached for the session; "bcc" compiles a
program in a child process once (about a second).  Nothing here skips anything else: a test
without the marker that touches the kernel fails loudly on a machine that cannot.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from diffuzz.cli import doctor

# The base needs of every kernel test, in the order a missing one explains the rest.
KERNEL_BASE = ("root", "bpf", "sockmap")

# No deadlines: timing belongs in bench/, and a loaded CI machine must not turn slow into red.
# On CI Hypothesis' own "ci" profile applies (derandomized, no database, no deadline).
settings.register_profile("diffuzz-dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "diffuzz-dev")


def kernel_skip_reason(needs: tuple[str, ...] = ()) -> str | None:
    """Why a kernel test cannot run here (None when it can): the first missing feature and the reason."""
    unknown = [n for n in needs if n not in doctor.FEATURES]
    if unknown:
        raise ValueError(f"pytest.mark.kernel(needs=...): unknown feature {unknown[0]!r}; "
                         f"known: {', '.join(doctor.FEATURES)}")
    return doctor.missing(*KERNEL_BASE, *needs)


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("kernel")
    if marker is None:
        return
    needs = tuple(marker.kwargs.get("needs", ()))
    reason = kernel_skip_reason(needs)
    if reason:
        pytest.skip(f"kernel test: {reason}")


@pytest.fixture(scope="session")
def kernel_profile():  # -> diffuzz.engine.probes.ProfileChoice
    """The profile this kernel's probes choose (diffuzz/engine/probes.py), probed once per session.

    Tests that compare the kernel with the model take the model's profile from here.  A kernel
    whose probes match no profile skips them all with one reason, and one test fails instead
    (tests/kernel/test_profile_probe.py names the probe), so a new kernel behaviour is reported
    once, not as scattered differences."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(f"kernel test: {reason}")
    from diffuzz.engine.probes import probe_and_choose
    from kernel_runner import local

    choice = probe_and_choose(local.run)
    if not choice.exact:
        pytest.skip(f"this kernel matches no profile ({choice.how()}); see tests/kernel/test_profile_probe.py")
    return choice
