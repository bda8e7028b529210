"""The engine: generation, the fuzz loop, comparison, confirmation, minimization, the corpus and
the kernel-profile probes.  It imports the contract and both sides (sim/, kernel_runner/), never
the front door (diffuzz/cli/).
"""
