"""A real BIND ``named`` for the RFC 2136 tests: one primary zone on 127.0.0.1, a free port,
updates allowed to one TSIG key; ``dig`` to read what it holds.

named runs in the foreground (``-g``) from a private directory holding its config, the zone
file and the key; as root it drops to the ``bind`` user (``-u bind``), which then owns that
directory (the zone's journal is written there). Stopped with SIGTERM, killed if need be.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ports import free_port

NAMED = shutil.which("named") or "/usr/sbin/named"
DIG = shutil.which("dig") or "/usr/bin/dig"
KEY_NAME = "adit-edge"
#: A key named serves queries for but lets update nothing (its updates are REFUSED).
OTHER_KEY_NAME = "adit-reader"


def available() -> bool:
    """Whether named and dig are installed (tests/debian-packages.txt has them)."""
    return os.access(NAMED, os.X_OK) and os.access(DIG, os.X_OK)


@dataclass
class Bind:
    """A running named serving ``zone``."""

    zone: str
    port: int
    directory: Path
    secret: str = field(repr=False)
    other_secret: str = field(repr=False)
    popen: subprocess.Popen[bytes]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.directory / "named.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def key_file(self, path: Path, secret: str | None = None, name: str = KEY_NAME) -> Path:
        """tsig-keygen's key clause for the zone's key (or another ``secret``), mode 0600."""
        path.write_text(
            f'key "{name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret or self.secret}";\n}};\n'
        )
        path.chmod(0o600)
        return path

    def dig(self, name: str, rdtype: str) -> list[str]:
        """What named answers for ``name`` ``rdtype`` (dig +short), sorted."""
        out = subprocess.run(
            [DIG, "@127.0.0.1", "-p", str(self.port), "+short", "+norecurse", "+tcp", name, rdtype],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def _config(directory: Path, zone: str, port: int, secret: str, other: str) -> str:
    return f"""
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ 127.0.0.1; }};
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};
key "{OTHER_KEY_NAME}" {{ algorithm hmac-sha256; secret "{other}"; }};
zone "{zone}" {{
    type primary;
    file "{directory}/{zone}.zone";
    update-policy {{ grant {KEY_NAME} zonesub ANY; }};
}};
"""


def _zone_file(zone: str) -> str:
    return f"""$TTL 300
@   IN SOA ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 300 )
    IN NS  ns1.{zone}.
ns1 IN A   127.0.0.1
taken IN A 192.0.2.99
"""


@contextlib.contextmanager
def running(zone: str) -> Iterator[Bind]:
    """named serving ``zone`` (with ``taken.ZONE A 192.0.2.99`` already in it) until the block
    ends; its directory is removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="adit-bind-"))
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    port = free_port("both")
    (directory / "named.conf").write_text(_config(directory, zone, port, secret, other))
    (directory / f"{zone}.zone").write_text(_zone_file(zone))
    argv = [NAMED, "-g", "-c", str(directory / "named.conf"), "-n", "1"]
    if os.geteuid() == 0:
        bind_user = pwd.getpwnam("bind")
        for path in [directory, *directory.iterdir()]:
            os.chown(path, bind_user.pw_uid, bind_user.pw_gid)
        argv += ["-u", "bind"]
    output = (directory / "named.out").open("wb")
    popen = subprocess.Popen(
        argv,
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    output.close()
    server = Bind(zone, port, directory, secret, other, popen)
    try:
        deadline = time.monotonic() + 20
        while "running" not in (directory / "named.out").read_text(errors="replace"):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "named did not start:\n" + (directory / "named.out").read_text(errors="replace")
                )
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
