"""The distro packages, built from a clean tree and proven under a real systemd.

* The .deb (one per Debian release, built inside a root of that release so that its private venv
  links to that release's python3), the .rpm and the pacman package build; their file lists hold
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

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "(.+)"$',
    (REPO / "runtime/adit/version.py").read_text(encoding="utf-8"),
    re.MULTILINE,
).group(1)  # type: ignore[union-attr]
SUITES = ("trixie", "bookworm")
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
CACHE = Path(os.environ.get("ADIT_CI_CACHE", "/var/cache/adit-ci"))
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
HOST = "app.example.test"


def run(
    argv: list[str], *, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a host command; on failure, fail with its output."""
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def clean_tree(dest: Path) -> Path:
    """The working tree's tracked and unignored files (what a clean checkout holds)."""
    files = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"]).stdout
    dest.mkdir(parents=True)
    archive = dest.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, files.split("\0")):
            if (REPO / name).exists():
                tar.add(REPO / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()
    return dest


def cached_roots(suites: tuple[str, ...]) -> dict[str, Path]:
    """The cached debootstrap root of each suite (built on first use, all at once)."""
    builds = {
        suite: subprocess.Popen(
            [str(HERE / "build-root.sh"), suite],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for suite in suites
    }
    roots = {}
    for suite, popen in builds.items():
        out, err = popen.communicate(timeout=1500)
        assert popen.returncode == 0, f"debootstrap of {suite} failed:\n{err[-6000:]}"
        roots[suite] = Path(out.strip().splitlines()[-1])
    return roots


def copy_root(cached: Path, dest: Path) -> Path:
    run(["cp", "-a", "--reflink=auto", str(cached), str(dest)], timeout=600)
    return dest


@dataclass(frozen=True)
class Build:
    """A package build running in the background, its log and where its package lands."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    out: Path

    def wait(self, pattern: str, timeout: float = 1500) -> Path:
        code = self.popen.wait(timeout=timeout)
        log = self.log.read_text(errors="replace")
        assert code == 0, f"{self.name} build exited {code}:\n{log[-6000:]}"
        found = sorted(self.out.rglob(pattern))
        assert len(found) == 1, f"{self.name}: {pattern} not found in {self.out}:\n{log[-3000:]}"
        return found[0]


def start(name: str, argv: list[str], log: Path, out: Path, env: dict[str, str] | None) -> Build:
    handle = log.open("wb")
    popen = subprocess.Popen(
        argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    handle.close()
    return Build(name, popen, log, out)


def deb_in_root(root: Path, src: Path, suite: str, log: Path) -> Build:
    """deb/build.sh run inside ``root`` (a copy), with the target's python3 and dpkg-deb."""
    inside_src = root / "srv/adit-src"
    run(["cp", "-a", f"{src}/.", str(inside_src)])
    out = root / "srv/adit-out"
    out.mkdir(parents=True)
    pip_cache = CACHE / f"pip-{suite}"
    pip_cache.mkdir(parents=True, exist_ok=True)
    (root / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
    # pip inside the root trusts what the host trusts (a TLS-intercepting proxy's CA, say) and
    # uses the host's proxy settings.
    env = dict(CLEAN_ENV)
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_ca.exists():
        (root / "srv/host-ca.crt").write_bytes(host_ca.read_bytes())
        env["PIP_CERT"] = env["SSL_CERT_FILE"] = "/srv/host-ca.crt"
    env.update({k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")})
    script = (
        f"mount -t proc proc {root}/proc && mount --bind /dev {root}/dev && "
        f"mount --bind {pip_cache} {root}/root/.cache/pip && "
        f"exec chroot {root} /srv/adit-src/deb/build.sh --out /srv/adit-out"
    )
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
    return start(f"deb ({suite})", argv, log, out, env)


@dataclass(frozen=True)
class Artifacts:
    """Every package this run built."""

    debs: dict[str, Path]
    rpm: Path
    pacman: Path
    roots: dict[str, Path]
    src: Path


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Artifacts]:
    """Build all packages at once: a .deb inside each root, the .rpm and pacman on the host."""
    work = tmp_path_factory.mktemp("packages")
    src = clean_tree(work / "src")
    roots = {s: copy_root(r, work / f"root-{s}") for s, r in cached_roots(SUITES).items()}
    builds = [deb_in_root(roots[s], src, s, work / f"deb-{s}.log") for s in SUITES]
    rpm_out = work / "rpm"
    builds.append(
        start(
            "rpm",
            [
                "rpmbuild",
                "-bb",
                "--define",
                f"adit_src {src}",
                "--define",
                f"_topdir {rpm_out}",
                str(src / "rpm/adit.spec"),
            ],
            work / "rpm.log",
            rpm_out / "RPMS",
            None,
        )
    )
    # makepkg refuses root: build as an unprivileged user from a tree that user owns.
    if run(["id", "adit-build"], check=False).returncode != 0:
        run(["useradd", "--create-home", "adit-build"])
    # pytest's tmp dir is root's (0700): the build user gets a tree of its own under /var/tmp.
    pac_work = Path(tempfile.mkdtemp(prefix="adit-pacman-", dir="/var/tmp"))
    pac_work.chmod(0o755)
    pac_src = pac_work / "src"
    run(["cp", "-a", str(src), str(pac_src)])
    pac_out = pac_work / "out"
    pac_out.mkdir()
    run(["chown", "-R", "adit-build:", str(pac_work)])
    Path("/var/lib/pacman").mkdir(parents=True, exist_ok=True)
    builds.append(
        start(
            "pacman",
            [
                "runuser",
                "-u",
                "adit-build",
                "--",
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
                "HOME=/home/adit-build",
                f"PKGDEST={pac_out}",
                f"BUILDDIR={pac_src}/build",
                "sh",
                "-c",
                f"cd {pac_src}/packaging && exec makepkg --nodeps --noconfirm --force",
            ],
            work / "pacman.log",
            pac_out,
            None,
        )
    )
    try:
        debs = {s: b.wait(f"adit_{VERSION}_*.deb") for s, b in zip(SUITES, builds, strict=False)}
        rpm = builds[2].wait(f"adit-{VERSION}-1.*.rpm")
        pacman = builds[3].wait(f"adit-{VERSION}-1-*.pkg.tar.*")
        shutil.copy2(pacman, work / pacman.name)
    finally:
        for build in builds:
            if build.popen.poll() is None:
                build.popen.kill()
                build.popen.wait()
        shutil.rmtree(pac_work, ignore_errors=True)
    yield Artifacts(debs, rpm, work / pacman.name, roots, src)
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


def test_rpm_contents_metadata_and_rpmlint(artifacts: Artifacts) -> None:
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
    rc = str(artifacts.src / "rpm/adit.rpmlintrc")
    lint = run(["rpmlint", "-r", rc, rpm], check=False, timeout=900)
    errors = [line for line in lint.stdout.splitlines() if ": E: " in line]
    assert not errors, lint.stdout


def test_pacman_contents_and_metadata(artifacts: Artifacts) -> None:
    pkg = str(artifacts.pacman)
    check_file_list(run(["bsdtar", "-tf", pkg]).stdout.splitlines())
    info = run(["bsdtar", "-xOf", pkg, ".PKGINFO"]).stdout
    assert f"pkgver = {VERSION}-1" in info
    assert "backup = etc/adit/config.yml" in info


# --- under a real systemd ----------------------------------------------------------------------


@dataclass
class Container:
    """A Debian root booted with ``systemd-nspawn -b``; commands enter it with ``nsenter``."""

    root: Path
    nspawn: subprocess.Popen[bytes]
    pid: int

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        argv = ["nsenter", "-t", str(self.pid), "-a", "/usr/bin/env", "-i"]
        argv += [f"{k}={v}" for k, v in CLEAN_ENV.items()]
        argv += ["/bin/bash", "-euo", "pipefail", "-c", script]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            journal = subprocess.run(
                [*argv[:-1], "journalctl --no-pager -n 80 -o short-monotonic"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
            raise AssertionError(
                f"in the container: {script}\nexit {result.returncode}\nstdout:\n"
                f"{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}\njournal:\n{journal}"
            )
        return result

    def out(self, script: str, timeout: float = 180) -> str:
        return self.sh(script, timeout=timeout).stdout.strip()

    def write(self, path: str, text: str) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


@contextlib.contextmanager
def booted(root: Path, name: str) -> Iterator[Container]:
    """Boot ``root``; shut it down (and reap nspawn) whatever happens."""
    log = root.with_suffix(".console.log")
    handle = log.open("wb")
    nspawn = subprocess.Popen(
        [
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--private-network",
            "--console=pipe",
            f"--machine={name}",
            f"--directory={root}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    try:
        pid = 0
        deadline = time.monotonic() + 30
        while not pid:
            assert nspawn.poll() is None, f"nspawn exited:\n{log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "no container init appeared"
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children")
            found = children.read_text().split() if children.exists() else []
            pid = int(found[0]) if found else 0
            if not pid:
                time.sleep(0.1)
        container = Container(root, nspawn, pid)
        deadline = time.monotonic() + 60
        while True:
            state = container.sh("systemctl is-system-running --wait || true", timeout=90)
            if state.stdout.strip() in ("running", "degraded"):
                break
            assert time.monotonic() < deadline, f"container did not boot: {state.stdout}"
            time.sleep(0.2)
        yield container
    finally:
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's init to power off
            try:
                nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait(timeout=30)


EDGE_DROPIN = """\
[Service]
ExecStart=
ExecStart=/usr/bin/adit edge --state-dir /var/lib/adit-edge --tunnel-listen 127.0.0.1:7844 \
--http-listen 127.0.0.1:8080 --api-listen 127.0.0.1:7843 --location test
"""

PROBE = """\
import http.client, pathlib, sys, time
stop, out = pathlib.Path(sys.argv[1]), open(sys.argv[2], "w")
for _ in range(20000):
    if stop.exists():
        break
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
        conn.request("GET", "/", headers={"Host": "app.example.test"})
        reply = conn.getresponse()
        out.write(f"{reply.status} {reply.read().decode().strip()}\\n")
        conn.close()
    except Exception as exc:
        out.write(f"ERR {exc!r}\\n")
    out.flush()
    time.sleep(0.01)
"""


def config_text(tunnel_id: str | None, origin_port: int, *, broken: bool = False) -> str:
    head = (
        f"tunnel: {tunnel_id}\ncredentials-file: /etc/adit/{tunnel_id}.json\n" if tunnel_id else ""
    )
    service = "bogus-scheme-without-slashes" if broken else f"http://127.0.0.1:{origin_port}"
    return head + textwrap.dedent(
        f"""\
        ingress:
          - hostname: {HOST}
            service: {service}
          - service: http_status:404
        """
    )


def provision(c: Container) -> str:
    """Edge as adit-edge.service, two origins, an account and a tunnel; returns its id."""
    c.write("/srv/www-a/index.html", "origin-a\n")
    c.write("/srv/www-b/index.html", "origin-b\n")
    c.write("/run/systemd/system/adit-edge.service.d/test.conf", EDGE_DROPIN)
    c.sh(
        "systemctl daemon-reload && systemctl start adit-edge && "
        "for p in 8001:a 8002:b; do systemd-run --unit=origin-${p#*:} -p DynamicUser=yes "
        "python3 -m http.server --bind 127.0.0.1 --directory /srv/www-${p#*:} ${p%:*}; done"
    )
    c.sh(
        "for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8080/ && "
        "curl -s -o /dev/null http://127.0.0.1:8001/ && curl -s -o /dev/null "
        "http://127.0.0.1:8002/ && exit 0; sleep 0.1; done; exit 1"
    )
    admin = "runuser -u adit -- env HOME=/tmp adit edge"
    state = "--state-dir /var/lib/adit-edge"
    tag = c.out(f"{admin} account create acme {state}")
    c.sh(f"{admin} zone add --account {tag} {HOST} {state}")
    token_out = c.out(
        f"{admin} token create --account {tag} --api-url https://127.0.0.1:7843 {state}"
    )
    login = next(line for line in token_out.splitlines() if "tunnel login" in line).split()[1:]
    c.sh(f"mkdir -p /root/prov && cd /root/prov && HOME=/root/prov adit {shlex.join(login)}")
    created = c.out("cd /root/prov && HOME=/root/prov adit tunnel create t1")
    match = re.search(r"with id ([0-9a-f-]{36})", created)
    assert match, created
    tunnel_id = match.group(1)
    c.sh(f"cd /root/prov && HOME=/root/prov adit tunnel route dns t1 {HOST}")
    c.sh(
        f"install -m0640 -o root -g adit /root/prov/.adit/{tunnel_id}.json "
        f"/etc/adit/{tunnel_id}.json"
    )
    return tunnel_id


def wait_for_body(c: Container, body: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = c.sh(f"curl -s -H 'Host: {HOST}' http://127.0.0.1:8080/", check=False).stdout.strip()
        if seen == body:
            return
        time.sleep(0.1)
    raise AssertionError(f"expected {body!r} through the tunnel, last saw {seen!r}")


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
