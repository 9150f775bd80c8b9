#!/usr/bin/env bash
# Build adit_<version>_<arch>.deb from this checkout with dpkg-deb.
#   deb/build.sh [--python /usr/bin/python3] [--wheel FILE] [--out DIR]
# The private venv (/usr/lib/adit/venv) is built with PYTHON, which must be the interpreter of
# the Debian release the package is for (Debian 12: 3.11, Debian 13: 3.13): build on that
# release, or inside a root of it. The package depends on exactly that python3.X.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/.." && pwd)"
python=/usr/bin/python3
out="$PWD"
stage_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python="$2"; stage_args+=(--python "$2"); shift 2 ;;
        --wheel) stage_args+=(--wheel "$2"); shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "deb/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
version="$("$src/packaging/version.sh")"
arch="$(dpkg --print-architecture)"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pynext="$("$python" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
"$src/packaging/stage.sh" "$root" --no-bytecode "${stage_args[@]}" >/dev/null

install -d "$root/usr/share/doc/adit" "$root/DEBIAN"
install -m0644 "$here/copyright" "$root/usr/share/doc/adit/copyright"
sed "s/@VERSION@/$version/" "$here/changelog" | gzip -9n >"$root/usr/share/doc/adit/changelog.gz"
chmod 0644 "$root/usr/share/doc/adit/changelog.gz"
install -D -m0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/adit"

size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@PYVER@/$pyver/g" -e "s/@PYNEXT@/$pynext/g" "$here/control" >"$root/DEBIAN/control"
printf '/etc/adit/config.yml\n' >"$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do install -m0755 "$here/$script" "$root/DEBIAN/$script"; done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles" "$root/DEBIAN/control"
mkdir -p "$out"
deb="$out/adit_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
echo "$deb"
