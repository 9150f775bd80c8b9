"""Installing and upgrading adit from the signed repositories ``./run repo`` builds (issue 19).

* The signatures, on the host: ``rpm -K`` verifies every package against the test key imported
  into a private rpmdb, ``gpg --verify`` the signed ``repomd.xml``; ``pacman-key`` (its own
  keyring) verifies the pacman database; a tampered package or database fails.
* In a booted trixie and bookworm root, the repository served on 127.0.0.1: the README's apt
  lines, verbatim, install adit; ``apt-get update`` refuses an ``InRelease`` signed by another
  key; purge leaves only the system user, and a reinstall works.
* The upgrade under load: from VERSION to NEXT while requests run through the tunnel, then a
  broken BROKEN, then back down to VERSION; no request fails and the unit stays active.

Run by ``./run packages-test`` (ADIT_PACKAGES_TEST=1, root).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from distro_roots import (
    PROBE,
    SUITES,
    VERSION,
    Container,
    booted,
    cached_roots,
    config_text,
    copy_root,
    provision,
    run,
    wait_for_body,
)
from package_repository import (
    BROKEN,
    BROKEN_MARK,
    NEXT,
    README_URL,
    Key,
    Repository,
    readme_block,
    rpmlint,
)

PORT = 8090
BASE = f"http://127.0.0.1:{PORT}"
KEYRING = "/usr/share/keyrings/adit-archive-keyring.gpg"


def tamper(path: Path) -> None:
    """Flip one byte in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the signatures, on the host -----------------------------------------------------------------


def test_rpm_packages_and_metadata_are_signed(repository: Repository, tmp_path: Path) -> None:
    rpmdb = tmp_path / "rpmdb"
    rpmdb.mkdir()
    dbpath = ["--dbpath", str(rpmdb)]
    rpms = repository.rpms()
    assert {p.name.split("-")[1] for p in rpms} == {VERSION, NEXT}, rpms

    # Without the key, the signature is there but cannot be checked.
    unknown = run(["rpm", *dbpath, "-K", str(rpms[0])], check=False)
    assert unknown.returncode != 0, unknown.stdout
    run(["rpm", *dbpath, "--import", str(repository.out / "adit.asc")])
    for rpm in rpms:
        checked = run(["rpm", *dbpath, "-Kv", str(rpm)]).stdout
        assert "Header V4 RSA/SHA512 Signature" in checked or "RSA/SHA" in checked, checked
        assert "NOT OK" not in checked and "NOKEY" not in checked, checked

    tampered = tmp_path / rpms[0].name
    shutil.copy2(rpms[0], tampered)
    tamper(tampered)
    assert run(["rpm", *dbpath, "-K", str(tampered)], check=False).returncode != 0

    repodata = repository.out / "rpm/repodata"
    keyring = tmp_path / "gnupg"
    keyring.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(keyring), "--batch"]
    run([*gpg, "--import", str(repository.out / "adit.asc")])
    run([*gpg, "--verify", str(repodata / "repomd.xml.asc"), str(repodata / "repomd.xml")])
    repo_file = (repository.out / "rpm/adit.repo").read_text()
    for line in ("gpgcheck=1", "repo_gpgcheck=1", "gpgkey=", "baseurl="):
        assert line in repo_file, repo_file
    # createrepo_c listed both versions.
    primary = next(repodata.glob("*-primary.xml*"))
    listing = run(["sh", "-c", f'zcat -f {primary} | grep -o \'ver="[^"]*"\'']).stdout
    assert f'ver="{VERSION}"' in listing and f'ver="{NEXT}"' in listing, listing
    subprocess.run(["gpgconf", "--homedir", str(keyring), "--kill", "all"], check=False)


def test_pacman_database_and_packages_are_signed(repository: Repository, tmp_path: Path) -> None:
    pac = repository.pacman_dir()
    db = pac / "adit.db.tar.zst"
    assert (pac / "adit.db").resolve() == db.resolve()
    assert (pac / "adit.db.sig").exists() and db.with_name(db.name + ".sig").exists()
    gpgdir = tmp_path / "pacman-gnupg"
    key = ["pacman-key", "--gpgdir", str(gpgdir)]
    run([*key, "--init"], timeout=300)
    try:
        run([*key, "--add", str(repository.out / "adit.asc")])
        run([*key, "--lsign-key", repository.key.fingerprint])
        run([*key, "--verify", f"{db}.sig", str(db)])
        package = repository.pacman_package(NEXT)
        run([*key, "--verify", f"{package}.sig", str(package)])
        names = run(["bsdtar", "-tf", str(db)]).stdout.split()
        # pacman keeps the newest version of a package in its database.
        assert any(n.startswith(f"adit-{NEXT}-1/") for n in names), names

        tampered = tmp_path / db.name
        shutil.copy2(db, tampered)
        shutil.copy2(f"{db}.sig", f"{tampered}.sig")
        tamper(tampered)
        assert run([*key, "--verify", f"{tampered}.sig", str(tampered)], check=False).returncode
    finally:
        subprocess.run(["gpgconf", "--homedir", str(gpgdir), "--kill", "all"], check=False)


def test_repository_packages_pass_the_linters(repository: Repository, tmp_path: Path) -> None:
    """NEXT (VERSION's are checked by test_packaging_distros) as the repository holds them."""
    for suite in SUITES:
        deb = repository.deb(suite, NEXT)
        lintian = run(["lintian", "--tag-display-limit", "0", str(deb)], check=False, timeout=900)
        errors = [line for line in lintian.stdout.splitlines() if line.startswith("E:")]
        assert not errors, lintian.stdout
    rpm = next(p for p in repository.rpms() if p.name.startswith(f"adit-{NEXT}-1."))
    errors, report = rpmlint(rpm, repository.out / "adit.asc", tmp_path)
    assert not errors, report
    info = run(["bsdtar", "-xOf", str(repository.pacman_package(NEXT)), ".PKGINFO"]).stdout
    assert f"pkgver = {NEXT}-1" in info


def test_run_repo_refuses_without_a_key(repository: Repository, tmp_path: Path) -> None:
    repo_sh = Path(__file__).resolve().parents[2] / "packaging/repo.sh"
    missing = run([str(repo_sh), "--out", str(tmp_path / "r")], check=False)
    assert missing.returncode == 2 and "no signing key: pass --key-id" in missing.stderr
    keydir = ["--key-dir", str(repository.key.home)]
    argv = [str(repo_sh), "--out", str(tmp_path / "r"), *keydir, "--key-id", "nobody@adit.test"]
    unknown = run(argv, check=False)
    assert unknown.returncode == 2 and "--key-id nobody@adit.test: no secret key" in unknown.stderr
    assert not (tmp_path / "r").exists()


# --- apt, in booted roots ------------------------------------------------------------------------


def serve(c: Container, repository: Repository) -> None:
    """The published tree at BASE inside the container (and nothing else for apt to reach)."""
    pkg = c.root / "srv/pkg"
    shutil.copytree(repository.out / "apt", pkg / "apt")
    for name in ("adit-archive-keyring.gpg", "adit.asc"):
        shutil.copy2(repository.out / name, pkg / name)
    shutil.copytree(repository.broken / "apt", pkg / "broken/apt")
    c.sh(
        f"systemd-run --unit=pkg-http -p DynamicUser=yes python3 -m http.server "
        f"--bind 127.0.0.1 --directory /srv/pkg {PORT}"
    )
    c.sh(
        f"for i in $(seq 100); do curl -fs -o /dev/null {BASE}/adit.asc && exit 0; "
        "sleep 0.1; done; exit 1"
    )
    # The root's own Debian mirror is unreachable from its private network: apt sees only us.
    # Dependencies (python3, systemd, ...) are in the root already.
    c.sh(
        "mkdir -p /root/apt-off && for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; "
        "do [ -f $f ] && mv $f /root/apt-off/; done; true"
    )
    # No tty to say yes on: what a pasted `apt-get install` would ask, answered once here.
    c.write("/etc/apt/apt.conf.d/90assume-yes", 'APT::Get::Assume-Yes "true";\n')


def older_restarted_once(c: Container) -> None:
    """A unit whose running adit predates in-place upgrades (its main process does not handle
    SIGUSR2, as a sleep does not): `adit upgrade-restart` never signals it (it would die) and
    reports it; with `--restart-older`, what the package scripts pass, it gets the
    `systemctl try-restart` that its own release's scripts would have given it."""
    # In the container's own /run (a tmpfs there, not the root's directory on the host).
    c.sh(
        "printf '[Service]\\nExecStart=/bin/sleep infinity\\n' "
        ">/run/systemd/system/adit-older.service && systemctl daemon-reload "
        "&& systemctl start adit-older.service"
    )
    pid = c.out("systemctl show -P MainPID adit-older.service")
    left = c.sh("adit upgrade-restart adit-older.service 2>&1", check=False)
    assert left.returncode == 1, left.stdout
    assert "predates in-place upgrades" in left.stdout, left.stdout
    assert c.out("systemctl show -P MainPID adit-older.service") == pid
    done = c.out("adit upgrade-restart --restart-older adit-older.service 2>&1")
    assert "restarted (it predated in-place upgrades" in done, done
    assert c.out("systemctl show -P MainPID adit-older.service") not in ("", "0", pid)
    c.sh("systemctl stop adit-older.service && rm /run/systemd/system/adit-older.service")
    c.sh("systemctl daemon-reload")


def readme_apt(install: str | None = None) -> str:
    """The README's apt lines as a root shell on this machine runs them (BASE for the URL)."""
    block = readme_block("signed-by=").replace(README_URL, BASE).replace("sudo ", "")
    assert block.count("apt-get install adit") == 1, block
    if install is not None:
        block = block.replace("apt-get install adit", install)
    return block


def forged_refused(c: Container, suite: str, repository: Repository, stranger: Key) -> None:
    """An InRelease signed by a key that is not in the keyring: apt-get update refuses it."""
    forged = c.root / "srv/pkg/forged/apt"
    shutil.copytree(repository.out / "apt", forged)
    dist = forged / f"dists/{suite}"
    for name in ("InRelease", "Release.gpg"):
        (dist / name).unlink()
    stranger.gpg("--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release"))
    stranger.gpg("--armor", "--detach-sign", "-o", str(dist / "Release.gpg"), str(dist / "Release"))
    c.write(
        "/etc/apt/sources.list.d/forged.list",
        f"deb [signed-by={KEYRING}] {BASE}/forged/apt {suite} main\n",
    )
    update = c.sh("apt-get update 2>&1", check=False)
    assert update.returncode != 0, update.stdout
    assert f"{BASE}/forged/apt {suite} InRelease" in update.stdout, update.stdout
    assert "is not signed" in update.stdout, update.stdout
    short = stranger.fingerprint[-16:]
    assert "NO_PUBKEY" in update.stdout or short in update.stdout, update.stdout
    c.sh("rm /etc/apt/sources.list.d/forged.list && apt-get update")


@pytest.mark.parametrize("suite", SUITES)
def test_apt_install_forged_purge_and_reinstall(repository: Repository, suite: str) -> None:
    work = Path(str(repository.out) + f"-install-{suite}")
    root = copy_root(cached_roots((suite,))[suite], work)
    try:
        with booted(root, f"adit-repo-{suite}") as c:
            serve(c, repository)
            c.sh(readme_apt(), timeout=300)
            # The newest version the repository holds, this release's build of it.
            assert c.out("adit --version") == f"adit version {NEXT}"
            python = {"trixie": "3.13", "bookworm": "3.11"}[suite]
            assert c.out("readlink -f /usr/lib/adit/venv/bin/python3").endswith(python)
            policy = c.out("apt-cache policy adit")
            assert VERSION in policy and NEXT in policy, policy
            assert c.out("systemctl is-enabled adit") == "enabled"

            forged_refused(c, suite, repository, repository.stranger)
            older_restarted_once(c)

            c.sh("apt-get purge adit", timeout=300)
            assert c.out("id -un adit") == "adit"
            # What remains is the user's (the key and the sources line they added), apt's
            # download cache, man-db's cache and the journal: nothing of the package.
            left = c.out(
                "find /etc /usr /var /opt -name '*adit*' -not -path '/var/log/journal/*' "
                "-not -path '/var/cache/man/*' -not -path '/var/cache/apt/archives/*' "
                f"-not -path {KEYRING} -not -path /etc/apt/sources.list.d/adit.list | sort"
            )
            assert left == "", left

            c.sh("apt-get install adit", timeout=300)
            assert c.out("adit --version") == f"adit version {NEXT}"
            assert c.out("systemctl is-enabled adit") == "enabled"
            assert c.out("stat -c '%a %U %G' /etc/adit") == "750 root adit"
            assert c.sh("test -f /etc/adit/config.yml", check=False).returncode == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the upgrade under load ----------------------------------------------------------------------

WATCH = """\
for i in $(seq 6000); do
    [ -e /srv/probe.stop ] && exit 0
    echo "$(systemctl is-active adit || true)" >>/srv/active.log
    sleep 0.1
done
"""


def running_version(c: Container) -> str:
    """The version the running connector's supervisor reports (build_info on /metrics)."""
    return c.out(
        "for p in 20241 20242 20243 20244 20245; do "
        "m=$(curl -fs http://127.0.0.1:$p/metrics || true); "
        "case $m in *cloudflared_tunnel_total_requests*) "
        'printf \'%s\\n\' "$m" | sed -n \'s/^build_info{.*version="\\([^"]*\\)".*/\\1/p\'; '
        "exit 0;; esac; done; exit 1"
    )


def under_load(c: Container, what: str, script: str) -> tuple[list[str], list[str], str]:
    """Run ``script`` while the probe and the watcher run; their logs, and its output."""
    c.sh("rm -f /srv/probe.stop /srv/probe.log /srv/active.log")
    c.sh("systemd-run --unit=probe python3 /srv/probe.py /srv/probe.stop /srv/probe.log")
    c.sh("systemd-run --unit=watch /bin/sh /srv/watch.sh")
    c.sh("for i in $(seq 200); do [ -s /srv/probe.log ] && exit 0; sleep 0.05; done; exit 1")
    result = c.sh(f"{script} 2>&1", check=False, timeout=600)
    # Requests keep running a while after the package step: a late failure counts too.
    c.sh("sleep 3; touch /srv/probe.stop")
    c.sh(
        "for i in $(seq 200); do systemctl is-active -q probe watch || exit 0; sleep 0.05; done; "
        "exit 1"
    )
    c.sh("systemctl reset-failed probe watch 2>/dev/null || true")
    probe = (c.root / "srv/probe.log").read_text().splitlines()
    active = (c.root / "srv/active.log").read_text().splitlines()
    assert probe and active, f"{what}: no request or no watch"
    return probe, active, f"{script}: exit {result.returncode}\n{result.stdout[-3000:]}"


def assert_invisible(what: str, probe: list[str], active: list[str], step: str) -> None:
    bad = [line for line in probe if line != "200 origin-a"]
    assert not bad, f"{what}: {len(bad)} of {len(probe)} requests failed: {bad[:5]}\n{step}"
    states = sorted(set(active))
    assert states == ["active"], f"{what}: systemctl is-active said {states}\n{step}"


@pytest.mark.parametrize("suite", SUITES)
def test_upgrade_broken_and_downgrade_under_load(repository: Repository, suite: str) -> None:
    work = Path(str(repository.out) + f"-upgrade-{suite}")
    root = copy_root(cached_roots((suite,))[suite], work)
    try:
        with booted(root, f"adit-upgrade-{suite}") as c:
            serve(c, repository)
            c.sh(readme_apt(f"apt-get install adit={VERSION}"), timeout=300)
            assert c.out("adit --version") == f"adit version {VERSION}"
            tunnel_id = provision(c)
            c.write("/etc/adit/config.yml", config_text(tunnel_id, 8001))
            c.sh("systemctl start adit", timeout=120)
            wait_for_body(c, "origin-a")
            assert running_version(c) == VERSION
            c.write("/srv/probe.py", PROBE)
            c.write("/srv/watch.sh", WATCH)

            # VERSION -> NEXT from the repository, under load.
            probe, active, step = under_load(c, "upgrade", f"apt-get install adit={NEXT}")
            assert_invisible(f"upgrade to {NEXT}", probe, active, step)
            assert c.out("adit --version") == f"adit version {NEXT}"
            assert running_version(c) == NEXT

            # A broken BROKEN: the old one keeps serving, and the journal says why.
            c.write(
                "/etc/apt/sources.list.d/adit-next.list",
                f"deb [signed-by={KEYRING}] {BASE}/broken/apt {suite} main\n",
            )
            c.sh("apt-get update", timeout=120)
            probe, active, step = under_load(c, "broken", f"apt-get install adit={BROKEN}")
            assert_invisible(f"broken {BROKEN}", probe, active, step)
            assert running_version(c) == NEXT
            journal = c.out("journalctl -u adit -o cat --no-pager")
            assert BROKEN_MARK in journal, journal[-3000:]

            # Back to VERSION: the same hand-over in reverse.
            probe, active, step = under_load(
                c, "downgrade", f"apt-get install --allow-downgrades adit={VERSION}"
            )
            assert_invisible(f"downgrade to {VERSION}", probe, active, step)
            assert c.out("adit --version") == f"adit version {VERSION}"
            assert running_version(c) == VERSION
            wait_for_body(c, "origin-a")
    finally:
        shutil.rmtree(root, ignore_errors=True)
