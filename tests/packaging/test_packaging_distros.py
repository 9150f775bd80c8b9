"""The distro packages, built from a clean tree and proven under a real systemd.

* The .deb (one per Debian release, built inside a root of that release so that its private venv
  links to that release's python3), the .rpm and the pacman package, as the signed repository
  ``./run repo`` wrote holds them (tests/package_repository.py); their file lists hold
  the private tree, the units and the man page, and nothing of Debian's ``supervisor``.
* A Debian trixie root (systemd 257, ``Type=notify-reload``) and a bookworm root (systemd 252,
  the ``Type=notify`` drop-in), built once with debootstrap and cached outside the clone, are
  booted with ``systemd-nspawn -b`` on a private network (loopback only). Inside: ``dpkg -i``,
  an edge (adit-edge.service) and two origins, a tunnel provisioned through the edge's API, and
  ``systemctl start/reload/stop adit``, ``adit service install TOKEN`` / ``uninstall``,
  ``dpkg -r`` / ``--purge``.

Run by ``./run packages-test`` (ADIT_PACKAGES_TEST=1, root).
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distro_roots import (
    PROBE,
    SUITES,
    VERSION,
    booted,
    cached_roots,
    config_text,
    copy_root,
    provision,
    run,
    wait_for_body,
)
from package_repository import Repository, rpmlint

#: Paths no adit package may ship: Debian's supervisor package owns them (STYLE.md §10).
FORBIDDEN = re.compile(r"dist-packages/supervisor|/etc/supervisor|supervisor\.service")
REQUIRED = (
    "usr/bin/adit",
    "usr/lib/adit/venv/bin/adit",
    "usr/lib/adit/venv/pyvenv.cfg",
    "usr/lib/systemd/system/adit.service",
    "usr/lib/systemd/system/adit-edge.service",
    "usr/lib/sysusers.d/adit.conf",
    "usr/lib/tmpfiles.d/adit.conf",
    "usr/share/man/man1/adit.1.gz",
    "usr/share/bash-completion/completions/adit",
    "etc/adit/config.yml",
)


@dataclass(frozen=True)
class Artifacts:
    """The packages of version VERSION, as the repository holds them, and roots to boot."""

    debs: dict[str, Path]
    rpm: Path
    pacman: Path
    roots: dict[str, Path]


@pytest.fixture(scope="session")
def artifacts(
    repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Artifacts]:
    """The repository's packages (./run repo built them) and a fresh copy of each root."""
    work = tmp_path_factory.mktemp("packages")
    roots = {s: copy_root(r, work / f"root-{s}") for s, r in cached_roots(SUITES).items()}
    debs = {}
    for suite in SUITES:
        deb = repository.deb(suite, VERSION)
        (roots[suite] / "srv/adit-out").mkdir(parents=True)
        debs[suite] = Path(shutil.copy2(deb, roots[suite] / "srv/adit-out" / deb.name))
    rpm = [p for p in repository.rpms() if p.name.startswith(f"adit-{VERSION}-1.")]
    assert len(rpm) == 1, repository.rpms()
    yield Artifacts(debs, rpm[0], repository.pacman_package(VERSION), roots)
    # The booted copies are ~0.4 GB each; pytest would keep three runs of them.
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)


def check_file_list(names: list[str]) -> None:
    normalised = {n.removeprefix("./").removeprefix("/").rstrip("/") for n in names}
    for required in REQUIRED:
        assert required in normalised, f"{required} missing from the package"
    bad = [n for n in normalised if FORBIDDEN.search("/" + n) or "dist-packages" in n]
    assert not bad, f"forbidden paths: {bad[:10]}"
    assert any(n.startswith("usr/lib/adit/venv/lib/python3.") for n in normalised)


# --- the packages ------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_deb_contents_metadata_and_lintian(artifacts: Artifacts, suite: str) -> None:
    deb = artifacts.debs[suite]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert deb.name == f"adit_{VERSION}_{arch}.deb"
    listing = run(["dpkg-deb", "--contents", str(deb)]).stdout.splitlines()
    check_file_list([line.split()[5] for line in listing])
    assert run(["dpkg-deb", "--field", str(deb), "Version"]).stdout.strip() == VERSION
    depends = run(["dpkg-deb", "--field", str(deb), "Depends"]).stdout
    python = {"trixie": "3.13", "bookworm": "3.11"}[suite]
    assert f"python3 (>= {python})" in depends, depends
    conffiles = run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout
    assert conffiles.split() == ["/etc/adit/config.yml"]
    lintian = run(["lintian", "--tag-display-limit", "0", str(deb)], check=False, timeout=900)
    errors = [line for line in lintian.stdout.splitlines() if line.startswith("E:")]
    assert not errors, lintian.stdout


def test_rpm_contents_metadata_and_rpmlint(
    artifacts: Artifacts, repository: Repository, tmp_path: Path
) -> None:
    rpm = str(artifacts.rpm)
    check_file_list(run(["rpm", "-qlp", rpm]).stdout.splitlines())
    assert run(["rpm", "-qp", "--queryformat", "%{VERSION}", rpm]).stdout == VERSION
    requires = run(["rpm", "-qpR", rpm]).stdout
    assert "python(abi) = 3." in requires and "systemd" in requires
    assert "%config(noreplace)" not in requires
    config = run(["rpm", "-qp", "--configfiles", rpm]).stdout.split()
    assert config == ["/etc/adit/config.yml"]
    scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
    assert "systemctl --no-reload preset adit.service" in scripts
    assert "disable --now adit.service" in scripts
    errors, report = rpmlint(artifacts.rpm, repository.out / "adit.asc", tmp_path)
    assert not errors, report


def test_pacman_contents_and_metadata(artifacts: Artifacts) -> None:
    pkg = str(artifacts.pacman)
    check_file_list(run(["bsdtar", "-tf", pkg]).stdout.splitlines())
    info = run(["bsdtar", "-xOf", pkg, ".PKGINFO"]).stdout
    assert f"pkgver = {VERSION}-1" in info
    assert "backup = etc/adit/config.yml" in info


# --- under a real systemd ----------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_service_lifecycle_under_systemd(artifacts: Artifacts, suite: str) -> None:
    root = artifacts.roots[suite]
    deb = artifacts.debs[suite]
    with booted(root, f"adit-{suite}") as c:
        sd_version = int(c.out("systemctl --version | sed -n '1s/^systemd \\([0-9]*\\).*/\\1/p'"))
        c.sh(f"dpkg -i /srv/adit-out/{deb.name}")
        # One version everywhere: the CLI, the package.
        assert c.out("adit --version") == f"adit version {VERSION}"
        assert c.out("adit version") == f"adit version {VERSION}"
        assert c.out("dpkg-query -W -f '${Version}' adit") == VERSION
        assert c.out("systemctl is-enabled adit") == "enabled"
        assert c.out("stat -c '%a %U %G' /etc/adit") == "750 root adit"
        expected_type = "notify-reload" if sd_version >= 253 else "notify"
        assert c.out("systemctl show -P Type adit") == expected_type
        if sd_version < 253:
            assert c.out("systemctl show -P ExecReload adit").count("kill -HUP") == 1

        if sd_version >= 253:
            verify = c.sh(
                "systemd-analyze verify /usr/lib/systemd/system/adit.service "
                "/usr/lib/systemd/system/adit-edge.service 2>&1"
            )
            assert verify.stdout.strip() == "", verify.stdout

        tunnel_id = provision(c)
        c.write("/etc/adit/config.yml", config_text(tunnel_id, 8001))

        # start returns only after READY=1, which follows the first registration.
        c.sh("systemctl start adit", timeout=120)
        assert c.out("systemctl is-active adit") == "active"
        journal = c.out("journalctl -u adit -o cat --no-pager")
        registered = journal.find("Registered tunnel connection")
        started = journal.find("Started adit.service")
        assert 0 <= registered < started, journal
        wait_for_body(c, "origin-a")
        main_pid = c.out("systemctl show -P MainPID adit")
        assert c.out(f"stat -c %U /proc/{main_pid}") == "adit"
        assert c.out("stat -c '%a %U' /run/adit") == "700 adit"

        # Reload with a changed ingress under load: no failed request, then the new origin.
        c.write("/srv/probe.py", PROBE)
        c.sh(
            "rm -f /srv/probe.stop /srv/probe.log && systemd-run --unit=probe "
            "python3 /srv/probe.py /srv/probe.stop /srv/probe.log"
        )
        c.sh("for i in $(seq 200); do [ -s /srv/probe.log ] && exit 0; sleep 0.05; done; exit 1")
        c.write("/etc/adit/config.yml", config_text(tunnel_id, 8002))
        c.sh("systemctl reload adit", timeout=90)
        wait_for_body(c, "origin-b")
        c.sh("sleep 0.5; touch /srv/probe.stop")
        c.sh("for i in $(seq 200); do systemctl is-active -q probe || exit 0; sleep 0.05; done")
        lines = (root / "srv/probe.log").read_text().splitlines()
        assert lines, "the probe made no request"
        bad = [line for line in lines if line not in ("200 origin-a", "200 origin-b")]
        assert not bad, f"failed requests during the reload: {bad[:5]} of {len(lines)}"
        first_b = lines.index("200 origin-b")
        assert all(line == "200 origin-b" for line in lines[first_b:]), "served old after new"
        assert c.out("systemctl is-active adit") == "active"
        assert c.out("systemctl show -P MainPID adit") == main_pid

        # A broken config: refused, the unit stays active and the old config keeps serving.
        c.write("/etc/adit/config.yml", config_text(tunnel_id, 8002, broken=True))
        c.sh("systemctl reload adit", check=False, timeout=90)
        c.sh("sleep 1")
        assert c.out("systemctl is-active adit") == "active"
        assert c.out("systemctl show -P MainPID adit") == main_pid
        wait_for_body(c, "origin-b", timeout=5)

        # stop drains and exits cleanly.
        c.sh("systemctl stop adit", timeout=90)
        assert c.out("systemctl show -P Result adit") == "success"
        assert c.out("systemctl show -P ExecMainStatus adit") == "0"
        assert "Unregistered tunnel connection" in c.out("journalctl -u adit -o cat --no-pager")
        assert c.sh("test -e /run/adit", check=False).returncode != 0

        # adit service install TOKEN: a token-run connector on the packaged unit.
        c.write("/etc/adit/config.yml", config_text(None, 8001))
        token = c.out("cd /root/prov && HOME=/root/prov adit tunnel token t1")
        c.sh("systemctl disable adit")
        c.sh(f"adit service install {shlex.quote(token)}", timeout=120)
        assert c.out("systemctl is-active adit") == "active"
        assert c.out("systemctl is-enabled adit") == "enabled"
        assert c.out("stat -c '%a %U' /etc/adit/token") == "600 root"
        assert c.out("cat /etc/adit/token") == token
        dropin = c.out("cat /etc/systemd/system/adit.service.d/service-install.conf")
        assert "LoadCredential=token:/etc/adit/token" in dropin and token not in dropin
        main_pid = c.out("systemctl show -P MainPID adit")
        assert token not in c.out(f"tr '\\0' ' ' </proc/{main_pid}/cmdline")
        wait_for_body(c, "origin-a")
        again = c.sh(f"adit service install {shlex.quote(token)}", check=False)
        assert again.returncode == 1 and "already installed" in again.stderr
        c.sh("adit service uninstall", timeout=120)
        assert c.out("systemctl is-active adit || true") == "inactive"
        assert c.out("systemctl is-enabled adit || true") == "disabled"
        assert c.sh("test -e /etc/adit/token", check=False).returncode != 0
        assert (
            c.sh(
                "test -e /etc/systemd/system/adit.service.d/service-install.conf", check=False
            ).returncode
            != 0
        )
        nonroot = c.sh("runuser -u adit -- adit service install x", check=False)
        assert nonroot.returncode == 1 and "must be run as root" in nonroot.stderr

        # dpkg -r keeps the conffile (and the user); --purge leaves only the system user.
        c.sh("dpkg -r adit")
        assert c.sh("test -e /usr/lib/adit", check=False).returncode != 0
        assert c.sh("test -e /etc/adit/config.yml").returncode == 0
        assert c.out("systemctl is-active adit-edge || true") == "inactive"
        c.sh("dpkg --purge adit")
        assert c.out("id -un adit") == "adit"
        # man-db's own cache (systemd-analyze verify ran man) and the journal are not ours.
        left = c.out(
            "find /etc /usr /var /opt -name '*adit*' -not -path '/var/log/journal/*' "
            "-not -path '/var/cache/man/*' | sort"
        )
        assert left == "", left
