"""Booted Debian roots for the packaging tests (tests/packaging): build, boot, enter, provision.

The roots are debootstrap roots of each suite (tests/packaging/build-root.sh, cached outside the
clone), booted with ``systemd-nspawn -b`` on a private network (loopback only); commands enter
them with ``nsenter``. ``provision`` starts an edge (adit-edge.service) and two origins in one
and creates a tunnel through the edge's API.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "tests/packaging"
VERSION = re.search(
    r'^__version__ = "(.+)"$',
    (REPO / "runtime/adit/version.py").read_text(encoding="utf-8"),
    re.MULTILINE,
).group(1)  # type: ignore[union-attr]

SUITES = ("trixie", "bookworm")

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
