#!/usr/bin/env bash
# Stage adit's installed file tree into DESTDIR: the one layout every package (deb, rpm, pacman)
# ships. The application lives in a private tree, /usr/lib/adit/venv, a virtual environment built
# with PYTHON (the *target's* interpreter: the venv links to it, so build on, or in a root of, the
# release you package for); /usr/bin/adit is a symlink into it. Nothing goes to dist-packages.
#
#   packaging/stage.sh DESTDIR [--python /usr/bin/python3] [--wheel FILE] [--no-bytecode]
#
# --no-bytecode leaves out __pycache__ (Debian compiles in postinst and removes in prerm).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/.." && pwd)"
dest="$1"; shift
python=/usr/bin/python3
wheel=""
bytecode=1
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python="$2"; shift 2 ;;
        --wheel) wheel="$2"; shift 2 ;;
        --no-bytecode) bytecode=0; shift ;;
        *) echo "stage.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
version="$("$here/version.sh")"
# Bytecode only where asked for (below), never as a side effect of running the staged code.
export PYTHONDONTWRITEBYTECODE=1
prefix=/usr/lib/adit
venv="$prefix/venv"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

if [ -z "$wheel" ]; then
    wheeldir="$(mktemp -d)"
    trap 'rm -rf "$wheeldir"' EXIT
    "$python" -m venv "$wheeldir/build-env"
    "$wheeldir/build-env/bin/pip" -q wheel --no-deps -w "$wheeldir" "$src" >&2
    wheel="$(ls "$wheeldir"/adit-"$version"-*.whl)"
fi

rm -rf "${dest:?}$prefix"
"$python" -m venv "$dest$venv"
# Dependencies come from PyPI as manylinux wheels; no compiler, no system dist-packages.
"$dest$venv/bin/pip" install -q --no-compile --use-pep517 "$wheel" >&2
"$dest$venv/bin/python" -m pip uninstall -q -y pip setuptools >&2 2>/dev/null || true
# Only adit's own entry points stay in bin/ (not the tools its dependencies bring along).
find "$dest$venv/bin" -type f ! -name 'adit*' -delete
rm -rf "$dest$venv/lib/"python3*/site-packages/_distutils_hack \
    "$dest$venv/lib/"python3*/site-packages/distutils-precedence.pth
# The venv was built at DESTDIR/...: make it think it was built where it will live.
for f in "$dest$venv/bin/"*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if head -c2 "$f" | grep -q '#!'; then sed -i "1s|^#!.*python.*|#!$venv/bin/python3|" "$f"; fi
done
sed -i "/^command = /d" "$dest$venv/pyvenv.cfg"
rm -f "$dest$venv/.gitignore"
find "$dest$venv" -name RECORD -path '*.dist-info/*' -exec sed -i "s|$dest||g" {} +
find "$dest$venv" -name direct_url.json -delete
find "$dest$venv" -name __pycache__ -prune -exec rm -rf {} +
# Shared libraries are mapped, never executed.
find "$dest$venv" -type f -name '*.so*' -exec chmod 0644 {} +
# Some wheels ship modules with an execute bit and no interpreter line (certifi's tests, which
# aioquic brings in); they are imported, never run, so they lose the bit (rpmlint: an error).
find "$dest$venv/lib" -type f -perm /111 ! -name '*.so*' -print0 |
    while IFS= read -r -d '' f; do
        head -c2 "$f" | grep -q '#!' || chmod 0644 "$f"
    done
if [ "$bytecode" = 1 ]; then
    "$dest$venv/bin/python" -m compileall -q -j0 -s "$dest" -p / "$dest$venv/lib" >/dev/null
fi

install -d "$dest/usr/bin"
ln -sf "$venv/bin/adit" "$dest/usr/bin/adit"

install -D -m0644 "$here/systemd/adit.service" "$dest/usr/lib/systemd/system/adit.service"
install -D -m0644 "$here/systemd/adit-edge.service" "$dest/usr/lib/systemd/system/adit-edge.service"
install -D -m0644 "$here/systemd/adit.sysusers" "$dest/usr/lib/sysusers.d/adit.conf"
install -D -m0644 "$here/systemd/adit.tmpfiles" "$dest/usr/lib/tmpfiles.d/adit.conf"
install -D -m0644 "$here/config.yml" "$dest/etc/adit/config.yml"
install -D -m0644 "$here/systemd/notify-252.conf" "$dest/usr/share/adit/systemd/notify-252.conf"

install -d "$dest/usr/share/man/man1"
sed -e "s/@VERSION@/$version/g" "$here/adit.1" | gzip -9n >"$dest/usr/share/man/man1/adit.1.gz"
chmod 0644 "$dest/usr/share/man/man1/adit.1.gz"

# Completions from click itself, so they always match the command tree.
install -d "$dest/usr/share/bash-completion/completions" "$dest/usr/share/zsh/vendor-completions" \
    "$dest/usr/share/fish/vendor_completions.d"
_ADIT_COMPLETE=bash_source "$dest$venv/bin/python" -m adit.cli >"$dest/usr/share/bash-completion/completions/adit"
_ADIT_COMPLETE=zsh_source "$dest$venv/bin/python" -m adit.cli >"$dest/usr/share/zsh/vendor-completions/_adit"
_ADIT_COMPLETE=fish_source "$dest$venv/bin/python" -m adit.cli >"$dest/usr/share/fish/vendor_completions.d/adit.fish"
chmod 0644 "$dest/usr/share/bash-completion/completions/adit" "$dest/usr/share/zsh/vendor-completions/_adit" \
    "$dest/usr/share/fish/vendor_completions.d/adit.fish"
echo "$dest"
