#!/usr/bin/env bash
# Build adit's signed package repositories (apt, dnf/yum, pacman) from a clean tree.
#
#   packaging/repo.sh --out DIR --key-id ID [--key-dir GNUPGHOME] [--version X]... [--add]
#                     [--src TREE] [--families apt,rpm,pacman] [--url URL]
#
# --key-id      the signing key (a secret key in GNUPGHOME); required: nothing is published unsigned
# --key-dir     GnuPG home holding it (default: $GNUPGHOME, else ~/.gnupg)
# --version X   stamp X into the build instead of runtime/adit/version.py's (repeatable: each
#               version is built and published side by side, an upgrade needs N and N+1)
# --add         add to the repository already in DIR instead of replacing it
# --src TREE    build from TREE instead of the checkout's tracked files (`git ls-files`)
# --families    which repositories to build (default apt,rpm,pacman)
# --url URL     where DIR is published: written into DIR/rpm/adit.repo (default a placeholder)
#
# Layout of DIR:
#   adit-archive-keyring.gpg, adit.asc        the public key: binary (apt signed-by=), armored
#   apt/dists/{bookworm,trixie}/{InRelease,Release,Release.gpg}, main/binary-ARCH/Packages{,.gz,.xz}
#   apt/pool/SUITE/main/a/adit/*.deb          one pool per suite: each release's .deb links its
#                                             own python3 and so differs under the same file name
#   rpm/*.rpm (rpmsign'ed), rpm/repodata/ (createrepo_c) with repomd.xml.asc, rpm/adit.repo
#   pacman/ARCH/adit.db (repo-add --sign) and each package with its .sig
#
# Runs as root: each .deb is built inside a debootstrap root of its release (the roots of
# tests/packaging/build-root.sh, cached in /var/cache/adit-ci), all builds at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
checkout="$(cd "$here/.." && pwd)"
me="./run repo"
suites=(bookworm trixie)

die() { echo "$me: $*" >&2; exit 2; }

out="" key_id="" key_dir="${GNUPGHOME:-$HOME/.gnupg}" add=0 src_tree="" url="https://pkg.adit.example"
families="apt,rpm,pacman"
versions=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?}"; shift 2 ;;
        --key-id) key_id="${2:?}"; shift 2 ;;
        --key-dir) key_dir="${2:?}"; shift 2 ;;
        --version) versions+=("${2:?}"); shift 2 ;;
        --add) add=1; shift ;;
        --src) src_tree="${2:?}"; shift 2 ;;
        --families) families="${2:?}"; shift 2 ;;
        --url) url="${2%/}"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (--help lists them)" ;;
    esac
done
[ -n "$out" ] || die "--out DIR is required (where the repositories are written)"
[ -n "$key_id" ] || die "no signing key: pass --key-id ID (and --key-dir GNUPGHOME if not ~/.gnupg); \
create one with: gpg --quick-gen-key 'adit archive <you@example.org>' rsa4096 sign never"
[ -d "$key_dir" ] || die "--key-dir $key_dir: no such GnuPG home"
export GNUPGHOME="$key_dir"
gpg --batch --list-secret-keys "$key_id" >/dev/null 2>&1 ||
    die "--key-id $key_id: no secret key of that name in $key_dir (gpg --homedir $key_dir --list-secret-keys)"
fingerprint="$(gpg --batch --with-colons --list-secret-keys "$key_id" | awk -F: '$1=="fpr" {print $10; exit}')"
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap roots and chroot build the .deb files)"
for family in ${families//,/ }; do
    case "$family" in apt | rpm | pacman) ;; *) die "--families: unknown family $family (apt, rpm, pacman)" ;; esac
done
want() { [[ ",$families," == *",$1,"* ]]; }
for v in "${versions[@]}"; do
    [[ "$v" =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || die "--version $v: not a version (digits and dots, e.g. 2026.11.1)"
done

mkdir -p "$out"
out="$(cd "$out" && pwd)"
cache="${ADIT_CI_CACHE:-/var/cache/adit-ci}"
work="$(mktemp -d /var/tmp/adit-repo-XXXXXX)"
chmod 0755 "$work"
pids=()
# Each background build is a job of its own process group (set -m), so that an interrupted run
# stops the whole build (makepkg under runuser, pip under chroot), not just its first process.
set -m
cleanup() {
    for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# The source: the checkout's tracked and unignored files (what a clean clone holds), or --src.
src="$work/src"
mkdir -p "$src"
if [ -n "$src_tree" ]; then
    cp -a "$src_tree/." "$src/"
else
    git -C "$checkout" ls-files -co --exclude-standard -z |
        (cd "$checkout" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) |
        tar -C "$checkout" --null --no-recursion -T - -cf - | tar -C "$src" -xf -
fi
[ ${#versions[@]} -gt 0 ] || versions=("$("$src/packaging/version.sh")")

# One source tree per version, the version rewritten in its one source.
for v in "${versions[@]}"; do
    cp -a "$src" "$work/src-$v"
    sed -i "s/^__version__ = \".*\"$/__version__ = \"$v\"/" "$work/src-$v/runtime/adit/version.py"
    [ "$("$work/src-$v/packaging/version.sh")" = "$v" ] || die "could not stamp version $v"
done

# --- the builds, all started at once --------------------------------------------------------
declare -A logs=()
start() { # name command...: run in the background, logged
    local name="$1"; shift
    logs[$name]="$work/$name.log"
    "$@" >"${logs[$name]}" 2>&1 </dev/null &
    pids+=($!)
    names+=("$name")
}
names=()

deb_build() { # root suite version pip-cache
    local root="$1" v="$3" script
    script="mount -t proc proc $root/proc && mount --bind /dev $root/dev && "
    script+="mount --bind $4 $root/root/.cache/pip && "
    script+="exec chroot $root /srv/adit-src-$v/deb/build.sh --out /srv/adit-out-$v"
    unshare --mount --propagation private -- sh -c "$script"
}

if want apt; then
    declare -A roots=()
    for suite in "${suites[@]}"; do
        cached="$("$checkout/tests/packaging/build-root.sh" "$suite")"
        roots[$suite]="$work/root-$suite"
        cp -a --reflink=auto "$cached" "${roots[$suite]}"
    done
    # pip inside the roots trusts what the host trusts and uses its proxy settings.
    for suite in "${suites[@]}"; do
        root="${roots[$suite]}"
        mkdir -p "$cache/pip-$suite" "$root/root/.cache/pip"
        rm -f "$root/etc/resolv.conf"; cp /etc/resolv.conf "$root/etc/resolv.conf"
        [ -e /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/srv/host-ca.crt"
        for v in "${versions[@]}"; do
            cp -a "$work/src-$v" "$root/srv/adit-src-$v"
            mkdir -p "$root/srv/adit-out-$v"
            pipcert=()
            [ -e "$root/srv/host-ca.crt" ] && pipcert=(PIP_CERT=/srv/host-ca.crt SSL_CERT_FILE=/srv/host-ca.crt)
            start "deb-$suite-$v" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
                "${pipcert[@]}" $(env | grep -i '_proxy=' || true) \
                bash -c "$(declare -f deb_build); deb_build $root $suite $v $cache/pip-$suite"
        done
    done
fi
if want rpm; then
    for v in "${versions[@]}"; do
        start "rpm-$v" rpmbuild -bb --define "adit_src $work/src-$v" --define "_topdir $work/rpm-$v" \
            "$work/src-$v/rpm/adit.spec"
    done
fi
if want pacman; then
    # makepkg refuses root: an unprivileged build user with a tree of its own.
    id adit-build >/dev/null 2>&1 || useradd --create-home adit-build
    mkdir -p /var/lib/pacman
    for v in "${versions[@]}"; do
        pw="$work/pacman-$v"
        mkdir -p "$pw/out"
        cp -a "$work/src-$v" "$pw/src"
        chown -R adit-build: "$pw"
        start "pacman-$v" runuser -u adit-build -- env -i PATH=/usr/bin:/bin HOME=/home/adit-build \
            PKGDEST="$pw/out" BUILDDIR="$pw/src/build" \
            sh -c "cd $pw/src/packaging && exec makepkg --nodeps --noconfirm --force"
    done
fi
failed=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "$me: the ${names[$i]} build failed; the end of its log:" >&2
        tail -n 40 "${logs[${names[$i]}]}" >&2
        failed=1
    fi
done
pids=()
[ "$failed" = 0 ] || exit 1

# --- the repositories -----------------------------------------------------------------------
sign_detached() { # file [armor]: FILE.sig (binary) or FILE.asc (armored)
    if [ "${2:-}" = armor ]; then
        gpg --batch --yes --local-user "$key_id" --digest-algo SHA512 --armor --detach-sign -o "$1.asc" "$1"
    else
        gpg --batch --yes --local-user "$key_id" --digest-algo SHA512 --detach-sign -o "$1.sig" "$1"
    fi
}
gpg --batch --yes --export "$fingerprint" >"$out/adit-archive-keyring.gpg"
gpg --batch --yes --armor --export "$fingerprint" >"$out/adit.asc"
chmod 0644 "$out/adit-archive-keyring.gpg" "$out/adit.asc"

if want apt; then
    [ "$add" = 1 ] || rm -rf "$out/apt"
    arch="$(dpkg --print-architecture)"
    for suite in "${suites[@]}"; do
        pool="$out/apt/pool/$suite/main/a/adit"
        mkdir -p "$pool"
        for v in "${versions[@]}"; do cp "${roots[$suite]}/srv/adit-out-$v/"adit_*.deb "$pool/"; done
        dist="$out/apt/dists/$suite"
        bin="$dist/main/binary-$arch"
        mkdir -p "$bin"
        (cd "$out/apt" && apt-ftparchive packages "pool/$suite") >"$bin/Packages"
        gzip -9nkf "$bin/Packages"
        xz -kf "$bin/Packages"
        rm -f "$dist/Release" "$dist/InRelease" "$dist/Release.gpg"
        apt-ftparchive \
            -o APT::FTPArchive::Release::Origin=adit -o APT::FTPArchive::Release::Label=adit \
            -o APT::FTPArchive::Release::Suite="$suite" -o APT::FTPArchive::Release::Codename="$suite" \
            -o APT::FTPArchive::Release::Architectures="$arch" \
            -o APT::FTPArchive::Release::Components=main \
            -o APT::FTPArchive::Release::Description="adit for Debian $suite" \
            release "$dist" >"$work/Release"
        mv "$work/Release" "$dist/Release"
        gpg --batch --yes --local-user "$key_id" --digest-algo SHA512 --clearsign -o "$dist/InRelease" "$dist/Release"
        gpg --batch --yes --local-user "$key_id" --digest-algo SHA512 --armor --detach-sign -o "$dist/Release.gpg" "$dist/Release"
    done
fi

if want rpm; then
    [ "$add" = 1 ] || rm -rf "$out/rpm"
    mkdir -p "$out/rpm"
    for v in "${versions[@]}"; do cp "$work/rpm-$v"/RPMS/*/adit-*.rpm "$out/rpm/"; done
    rpmsign --define "_gpg_name $fingerprint" --define "_gpg_path $key_dir" \
        --define "__gpg $(command -v gpg)" --define "_gpg_digest_algo sha512" \
        --addsign "$out/rpm/"*.rpm >/dev/null 2>"$work/rpmsign.log" ||
        { cat "$work/rpmsign.log" >&2; die "rpmsign failed (key $fingerprint)"; }
    createrepo_c --quiet --update "$out/rpm" >/dev/null
    rm -f "$out/rpm/repodata/repomd.xml.asc"
    sign_detached "$out/rpm/repodata/repomd.xml" armor
    cat >"$out/rpm/adit.repo" <<REPO
[adit]
name=adit
baseurl=$url/rpm
enabled=1
gpgcheck=1
repo_gpgcheck=1
gpgkey=$url/adit.asc
REPO
fi

if want pacman; then
    [ "$add" = 1 ] || rm -rf "$out/pacman"
    for v in "${versions[@]}"; do
        for pkg in "$work/pacman-$v/out/"adit-*.pkg.tar.*; do
            parch="${pkg%.pkg.tar.*}"; parch="${parch##*-}"
            mkdir -p "$out/pacman/$parch"
            cp "$pkg" "$out/pacman/$parch/"
            sign_detached "$out/pacman/$parch/${pkg##*/}"
            repo-add --quiet --sign --key "$fingerprint" "$out/pacman/$parch/adit.db.tar.zst" \
                "$out/pacman/$parch/${pkg##*/}" >/dev/null
        done
    done
    # repo-add keeps the previous database as *.old: not part of what is published.
    rm -f "$out/pacman/"*/adit.*.old "$out/pacman/"*/adit.*.old.sig
fi

echo "$me: repositories in $out signed by $fingerprint (versions: ${versions[*]})"
