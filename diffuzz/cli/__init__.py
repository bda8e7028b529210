"""The front door: the `diffuzz` command (commands.py, fuzz.py), its views (reproduce_view.py,
status.py), the machine check (doctor.py) and the libFuzzer entry (fuzz_target.py).

The console script is `diffuzz.cli.commands:main`; `python -m diffuzz.cli` runs the same.
"""
