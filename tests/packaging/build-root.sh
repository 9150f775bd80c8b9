#!/usr/bin/env bash
# Build (once) a bootable Debian root for the packaging tests and print its path.
#   build-root.sh SUITE
# The root is cached outside the clone under $ADIT_ROOTS_CACHE (default /var/cache/adit-ci/roots),
# keyed by the suite, the mirror and the package list, so later runs reuse it.
set -euo pipefail
suite="$1"
here="$(cd "$(dirname "$0")" && pwd)"
cache="${ADIT_ROOTS_CACHE:-/var/cache/adit-ci/roots}"
# The mirror the machine's own apt sources name (deb822 or one-line format).
mirror="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)"
if [ -z "$mirror" ]; then
    mirror="$(awk '$1=="deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
packages="$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/root-packages.txt" | sort | paste -sd, -)"
key="$(printf '%s\n%s\n%s\n' "$suite" "$mirror" "$packages" | sha256sum | cut -c1-12)"
root="$cache/$suite-$key"
if [ ! -e "$root/.complete" ]; then
    mkdir -p "$cache"
    tmp="$(mktemp -d "$cache/.$suite-XXXXXX")"
    debootstrap --variant=minbase --include="$packages" "$suite" "$tmp/root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
        cat "$tmp/debootstrap.log" >&2; tail -n 50 "$tmp/root/debootstrap/debootstrap.log" >&2 || true
        rm -rf "$tmp"; exit 1; }
    # A root that boots quietly in a container: no getty on a console nobody reads.
    rm -f "$tmp/root/etc/machine-id"; : >"$tmp/root/etc/machine-id"
    chroot "$tmp/root" systemctl mask console-getty.service getty@tty1.service \
        systemd-networkd-wait-online.service >/dev/null 2>&1 || true
    touch "$tmp/root/.complete"
    rm -rf "$root"; mv "$tmp/root" "$root"; rm -rf "$tmp"
    # Roots of older package lists are dead weight now.
    for old in "$cache/$suite"-*; do [ "$old" = "$root" ] || rm -rf "$old"; done
fi
echo "$root"
