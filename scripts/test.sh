#!/usr/bin/env bash
# The test command (README): set up, lint, then the whole pytest suite.
#   bash scripts/test.sh [pytest args...]
# Fails on any lint error or test failure, and when pytest collects nothing (its exit 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit $?

.venv/bin/ruff check .
lint=$?
.venv/bin/pytest -q "$@"
tests=$?
if [ "$tests" -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure" >&2
fi
if [ "$lint" -ne 0 ]; then
    echo "test: ruff check failed" >&2
fi
[ "$lint" -eq 0 ] && [ "$tests" -eq 0 ]
