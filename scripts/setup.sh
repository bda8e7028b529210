#!/usr/bin/env bash
# Prepare this machine and this checkout for diffuzz.  Idempotent; the second run takes about a second.
#
#   bash scripts/setup.sh [--test|--fuzz|--vm]
#
# As root on a fresh Debian bookworm-like machine it:
#   1. installs the Debian packages that are missing (dpkg-query decides; apt-get update only then),
#   2. gives bcc kernel headers when /lib/modules/$(uname -r)/build is missing, by linking Debian's
#      newest linux-headers-*-amd64 there (docs/README "Kernel headers for bcc"; /work/shared/design.md),
#   3. creates .venv with --system-site-packages (so Debian's python3-bpfcc imports as `bcc`),
#   4. pip install -e '.[test]' when pyproject.toml changed since the last install (a stamp in .venv),
#   5. builds the BPF objects (make -C bpf) when bpf/Makefile exists,
#   6. with --test or --vm, what VMs need (kernel_runner/vm/): qemu 10 or newer (bookworm's 7.2
#      double-faults 6.12 guests, ../shared/notes/vm-matrix.md; on bookworm it comes from
#      bookworm-backports, read through a private sources list and pinned so nothing else is upgraded) and
#      busybox-static; then fetches VM kernels into ~/.cache/diffuzz/kernels (apt-get download,
#      never installed): --test the one the VM smoke test boots (6.12), --vm every one.
# Everything it changes outside the checkout is printed as "setup: CHANGED ..." and appended to
# .venv/setup.log.  --fuzz is the main job's set-up (no VM parts).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    ""|--test|--fuzz|--vm) ;;
    *) echo "setup: unknown option '$1' (use --test, --fuzz or --vm)" >&2; exit 2 ;;
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
# The interpreter is the first of /usr/bin/python3, then python3.N (newest first, 3.11 or newer) that
# gives a venv with its own pip.  Debian's ensurepip needs python3.N-venv; where that is missing (seen
# here: python3 upgraded to 3.14 beside bookworm's 3.11, whose -venv package was removed), pip is
# bootstrapped from Debian's own pip wheel (python3-pip-whl) instead.  A venv is not relocatable (its
# scripts name its path), so it is made in place; a .venv without a working pip, from an interrupted
# run, is removed and made again.
venv_usable() {
    [ -x "$1/bin/python" ] && "$1/bin/pip" --version >/dev/null 2>&1
}
venv_from() {  # venv_from PYTHON: .venv made with PYTHON, or fail
    local py=$1 wheel
    rm -rf .venv
    if "$py" -m venv --system-site-packages .venv >/dev/null 2>&1 && venv_usable .venv; then
        return 0
    fi
    rm -rf .venv
    wheel=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | sort -V | tail -n 1)
    [ -n "$wheel" ] || return 1
    # --ignore-installed: the system's own pip is visible through --system-site-packages.
    "$py" -m venv --without-pip --system-site-packages .venv >/dev/null 2>&1 &&
        .venv/bin/python "$wheel/pip" install -q --disable-pip-version-check --no-input \
            --ignore-installed "$wheel" >/dev/null 2>&1 &&
        venv_usable .venv && return 0
    rm -rf .venv
    return 1
}
if [ -d .venv ] && ! venv_usable .venv; then
    say "removing .venv: it has no working pip (an interrupted or older set-up)"
    rm -rf .venv
fi
if [ ! -d .venv ]; then
    made= tried=
    for py in /usr/bin/python3 $(ls /usr/bin/python3.* 2>/dev/null | grep -E '/python3\.[0-9]+$' | sort -t. -k2,2nr); do
        real=$(readlink -f "$py")
        case " $tried " in *" $real "*) continue ;; esac
        tried="$tried $real"
        "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || continue
        if venv_from "$py"; then made=$py; break; fi
    done
    if [ -z "$made" ]; then
        echo "setup: no Python 3.11 or newer in /usr/bin can make a venv with pip;" \
             "install python3-venv (or python3-pip-whl)" >&2
        exit 1
    fi
    say "created .venv with $made (--system-site-packages)"
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

# ---- 6. VMs: qemu, busybox-static, kernels ---------------------------------------------
qemu_major() {
    command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n '1s/.*version \([0-9][0-9]*\)\..*/\1/p'
}
if [ "${1:-}" = --test ] || [ "${1:-}" = --vm ]; then
    vm_missing=()
    [ "$(qemu_major)" -ge 10 ] 2>/dev/null || vm_missing+=(qemu)
    installed busybox-static || vm_missing+=(busybox-static)
    if [ ${#vm_missing[@]} -gt 0 ]; then
        if ! is_root; then
            echo "setup: VMs need ${vm_missing[*]}; run as root: sudo bash scripts/setup.sh ${1}" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        # shellcheck disable=SC1091
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
        apt_opts=()
        qemu_pkg=qemu-system-x86
        if [ "$codename" = bookworm ]; then
            # Only bookworm's own suites and its backports, and a pin that takes the qemu and seabios
            # source packages from backports: everything else still comes from bookworm (checked in a
            # fresh debootstrap'd bookworm: 43 packages, 4 of them from backports, qemu 10.0.2).
            aptdir="${XDG_CACHE_HOME:-$HOME/.cache}/diffuzz/apt-host"
            mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
            printf '%s\n' "deb http://deb.debian.org/debian bookworm main" \
                "deb http://deb.debian.org/debian bookworm-updates main" \
                "deb http://deb.debian.org/debian-security bookworm-security main" \
                "deb http://deb.debian.org/debian bookworm-backports main" >"$aptdir/sources.list"
            # `qemu-system-x86/bookworm-backports` alone fails ("held broken packages"): apt gives up
            # switching qemu-system-common/-data and seabios to backports.  Pin the qemu and seabios
            # source packages to backports instead; every other package still comes from bookworm.
            printf '%s\n' "Package: src:qemu src:seabios" "Pin: release n=bookworm-backports" \
                "Pin-Priority: 990" >"$aptdir/preferences"
            apt_opts=(-o "Dir::Etc::sourcelist=$aptdir/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
                      -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache::archives=$aptdir/archives"
                      -o "Dir::Etc::preferences=$aptdir/preferences" -o "APT::Sandbox::User=root")
        fi
        want=()
        for m in "${vm_missing[@]}"; do
            case "$m" in qemu) want+=("$qemu_pkg") ;; *) want+=("$m") ;; esac
        done
        say "installing ${want[*]}"
        apt-get "${apt_opts[@]}" update -qq
        apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${want[@]}" </dev/null
        changed "apt-get install ${want[*]}"
        if ! [ "$(qemu_major)" -ge 10 ] 2>/dev/null; then
            echo "setup: qemu $(qemu_major) is too old for the VMs (10 or newer is needed)" >&2
            exit 1
        fi
    fi
    if [ "${1}" = --vm ]; then vm_kernels=(all); else vm_kernels=(6.12); fi
    .venv/bin/diffuzz kernels fetch --no-probe "${vm_kernels[@]}"
fi

say "ready (${1:-default})"
