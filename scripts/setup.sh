#!/usr/bin/env bash
# Prepare this machine and this checkout for diffuzz.  Idempotent; the second run takes about a second.
#
#   bash scripts/setup.sh [--test|--fuzz]
#
# As root on a fresh Debian bookworm-like machine it:
#   1. installs the Debian packages that are missing (dpkg-query decides; apt-get update only then),
#   2. gives bcc kernel headers when /lib/modules/$(uname -r)/build is missing, by linking Debian's
#      newest linux-headers-*-amd64 there (docs/README "Kernel headers for bcc"; /work/shared/design.md),
#   3. creates .venv with --system-site-packages (so Debian's python3-bpfcc imports as `bcc`),
#   4. pip install -e '.[test]' when pyproject.toml changed since the last install (a stamp in .venv),
#   5. builds the BPF objects (make -C bpf) when bpf/Makefile exists.
# Everything it changes outside the checkout is printed as "setup: CHANGED ..." and appended to
# .venv/setup.log.  --test and --fuzz are accepted for the callers' clarity; both need the same set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    ""|--test|--fuzz) ;;
    *) echo "setup: unknown option '$1' (use --test or --fuzz)" >&2; exit 2 ;;
esac

say() { echo "setup: $*"; }
changes=()
changed() { say "CHANGED $*"; changes+=("$(date -u +%FT%TZ) $*"); }
is_root() { [ "$(id -u)" -eq 0 ]; }

# ---- 1. Debian packages ------------------------------------------------------------------
# make builds bpf/; the rest are the toolchain, bcc and the headers it compiles against.
packages=(clang llvm bpftool libbpf-dev python3-bpfcc python3-venv linux-headers-amd64 make)
installed() {
    case "$1" in
        # Any amd64 header package will do for bcc (only the UAPI matters), not just the metapackage.
        linux-headers-amd64) dpkg-query -W -f='${Status}\n' 'linux-headers-*-amd64' 'linux-headers-amd64' \
                                 2>/dev/null | grep -q '^install ok installed' ;;
        *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed' ;;
    esac
}
if command -v dpkg-query >/dev/null; then
    missing=()
    for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        if ! is_root; then
            echo "setup: missing Debian packages: ${missing[*]}; run as root: sudo bash scripts/setup.sh" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        say "installing ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
        changed "apt-get install ${missing[*]}"
    fi
else
    say "no dpkg-query (not Debian?): install by hand: ${packages[*]}"
fi

# ---- 2. .venv --------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
    say "created .venv (--system-site-packages)"
fi
if ! grep -q '^include-system-site-packages = true' .venv/pyvenv.cfg; then
    echo "setup: .venv was made without --system-site-packages, so bcc cannot import;" \
         "remove it (rm -rf .venv) and run setup again" >&2
    exit 1
fi
log_changes() {
    if [ ${#changes[@]} -gt 0 ]; then printf '%s\n' "${changes[@]}" >>.venv/setup.log; fi
}
trap log_changes EXIT

# ---- 3. kernel headers for bcc ---------------------------------------------------------
moddir="/lib/modules/$(uname -r)"
if [ ! -e "$moddir/build" ]; then
    if ! is_root; then
        echo "setup: $moddir/build is missing and bcc needs it; run as root: sudo bash scripts/setup.sh" >&2
        exit 1
    fi
    if [ -f scripts/bcc-headers.sh ]; then
        # The bcc backend's own script: links build -> newest linux-headers-*-amd64, source -> its -common.
        out=$(sh scripts/bcc-headers.sh)
        echo "$out"
        while IFS= read -r line; do
            case "$line" in *linked*|*created*) changed "${line#bcc-headers: }" ;; esac
        done <<<"$out"
    else
        build=$(ls -d /usr/src/linux-headers-6.1*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
        if [ -z "$build" ]; then
            echo "setup: no /usr/src/linux-headers-6.1*-amd64; apt-get install linux-headers-amd64" >&2
            exit 1
        fi
        mkdir -p "$moddir"
        ln -s "$build" "$moddir/build"
        changed "linked $moddir/build -> $build"
        if [ ! -e "$moddir/source" ] && [ -d "${build%-amd64}-common" ]; then
            ln -s "${build%-amd64}-common" "$moddir/source"
            changed "linked $moddir/source -> ${build%-amd64}-common"
        fi
    fi
fi

# ---- 4. the package, editable, when pyproject.toml changed -----------------------------
stamp=.venv/.diffuzz-pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x .venv/bin/diffuzz ]; then
    say "pip install -e '.[test]'"
    .venv/bin/pip install -q --disable-pip-version-check --no-input -e '.[test]'
    echo "$want" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
fi

# ---- 5. BPF objects --------------------------------------------------------------------
if [ -f bpf/Makefile ]; then
    make -s -C bpf
fi

say "ready (${1:-default})"
