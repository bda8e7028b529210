"""`python -m diffuzz.cli`: the diffuzz command where the console script is not installed."""

from diffuzz.cli.commands import main

main()
