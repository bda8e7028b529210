#!/bin/sh
# Give bcc kernel headers for the running kernel, borrowing Debian's linux-headers-*-amd64.
#
# Why: bcc compiles BPF C at run time against /lib/modules/$(uname -r)/build (and .../source).
# The host kernel has no header package of its own.  For SK_MSG programs only the UAPI matters
# (struct sk_msg_md, the helper ids, the map and program types), which is stable across kernels,
# so Debian's 6.1 headers work in its place (checked: a program compiled, loaded and ran;
# /work/shared/design.md "Measured facts").
#
# Idempotent: links only what is missing and never replaces an existing build/source entry.
# Usage: scripts/bcc-headers.sh   (root; prints what it did; exit 1 with the fix when it cannot)
set -eu

release=$(uname -r)
moddir=/lib/modules/$release

if [ -e "$moddir/build/include" ] && [ -e "$moddir/source/include/uapi/linux/bpf.h" ]; then
    echo "bcc-headers: $moddir/build and $moddir/source already hold kernel headers; nothing to do"
    exit 0
fi

# The newest Debian amd64 header package (its -common sibling holds the arch-independent tree).
build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$build" ]; then
    echo "bcc-headers: no /usr/src/linux-headers-*-amd64 found;" \
         "install them: apt-get install linux-headers-amd64 (pulls the matching -common)" >&2
    exit 1
fi
common=${build%-amd64}-common
if [ ! -d "$common" ]; then
    echo "bcc-headers: $build has no sibling $common; apt-get install $(basename "$common")" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "bcc-headers: need root to create $moddir/build -> $build" >&2
    exit 1
fi

if [ ! -d "$moddir" ]; then
    mkdir -p "$moddir"
    echo "bcc-headers: created $moddir"
fi
for pair in "build:$build" "source:$common"; do
    name=${pair%%:*}
    target=${pair#*:}
    if [ -e "$moddir/$name" ] || [ -L "$moddir/$name" ]; then
        echo "bcc-headers: $moddir/$name exists ($(readlink "$moddir/$name" || echo 'not a link')); left alone"
    else
        ln -s "$target" "$moddir/$name"
        echo "bcc-headers: linked $moddir/$name -> $target"
    fi
done
