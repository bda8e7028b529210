#!/usr/bin/env bash
# The main job (README): set up, check the machine, then fuzz.
#   bash scripts/fuzz.sh [diffuzz fuzz args...]      (default: --duration 60)
# Until the fuzz command exists it replays the seed corpus with `diffuzz reproduce`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --fuzz

# Exit 2 with the doctor's list when the machine cannot run the kernel side.
.venv/bin/diffuzz doctor

if .venv/bin/diffuzz fuzz --help >/dev/null 2>&1; then
    if [ $# -eq 0 ]; then set -- --duration 60; fi
    exec .venv/bin/diffuzz fuzz "$@"
fi
shopt -s nullglob
seeds=(corpus/seeds/*.json)
if [ ${#seeds[@]} -eq 0 ]; then
    echo "fuzz: no fuzz command yet and no corpus/seeds/*.json to replay" >&2
    exit 2
fi
exec .venv/bin/diffuzz reproduce "${seeds[@]}"
