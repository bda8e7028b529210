"""The contract: the Case (input) and the Outcome (what one side observed).

The model (sim/) and the kernel side (kernel_runner/) import only this package, and it imports
nothing else of the project: `diffuzz.contract.case` and `diffuzz.contract.outcome` are the two
modules they use.
"""
