"""The host never runs the splice forms that crash kernels (diffuzz/engine/zone.py splice_unsafe);
a VM campaign does (GenConfig.vm)."""

from __future__ import annotations

from pathlib import Path

from diffuzz.contract.case import SendFile, Splice, load_case
from diffuzz.engine.generate import random_case
from diffuzz.engine.zone import DEFAULT, GenConfig, splice_unsafe, zone_violation

CRASH = Path(__file__).resolve().parents[2] / "corpus" / "vm-only" / "K4_splice_after_cork_crashes_6_12.json"


def test_the_case_that_panicked_6_12_is_outside_the_host_zone_and_inside_the_vm_zone() -> None:
    case = load_case(CRASH)
    assert splice_unsafe(case.program)
    assert "VM only" in (zone_violation(case) or "")
    # In a VM only the splice rule is lifted (this case's one-byte apply also passes 64 runs).
    assert "VM only" not in (zone_violation(case, GenConfig(vm=True)) or "")


def test_host_cases_never_splice_with_an_unsafe_program_and_vm_cases_do() -> None:
    def splices(config: GenConfig) -> int:
        n = 0
        for i in range(3000):
            c = random_case(11, i, config)
            if splice_unsafe(c.program) and any(isinstance(e, SendFile | Splice) for e in c.events):
                n += 1
        return n

    assert splices(DEFAULT) == 0
    assert splices(GenConfig(vm=True)) > 0


def test_the_repeating_push_form_is_a_vm_share_and_its_model_hang_names_k5() -> None:
    import sim
    from diffuzz.engine.invariants import unexplained
    from diffuzz.engine.zone import VM_REPEATING_P

    def repeating(config: GenConfig) -> int:
        """Cases the host's zone refuses for their repeating push/pop."""
        return sum((zone_violation(c) or "").startswith("push/pop in the repeating last step list")
                   for c in (random_case(12, i, config) for i in range(3000)))

    assert repeating(DEFAULT) == 0
    assert 0 < repeating(GenConfig(vm=True)) < 3000 * VM_REPEATING_P * 2
    k5 = load_case(CRASH.with_name("K5_push_every_run_exhausts_memory_6_12.json"))
    m = sim.run(k5)
    assert m.hang and "K5" in m.notes["kernel_bugs"]
    assert not unexplained(k5, m)  # the model's hang is the kernel's loop, not a model bug
