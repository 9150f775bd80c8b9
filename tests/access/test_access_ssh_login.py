"""Issue 18: ``adit access login`` then ``adit access ssh`` as ssh's ProxyCommand to an SSH
hostname guarded by an Access policy: a real OpenSSH server behind a real connector, the login
done in headless Chromium through npm ``oidc-provider``, a 50 MB scp whose sha256 matches both
ways. Without a login there is no token to send: the edge refuses the WebSocket, the client
says why in one line and what to run, and sshd sees no connection.

One provider and one browser for the module (as tests/access/test_edge_login.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from access_support.browser import new_context
from access_support.cli_login import allow_cli_login, login_url
from access_support.oidc import OidcProvider, start_oidc_provider
from access_support.pki import ServiceCa, write_service_ca
from adversary import api_call
from harness import (
    Account,
    Edge,
    Processes,
    adit_command,
    create_tunnel,
    login,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port
from sshd import Sshd

pytestmark = [pytest.mark.process, pytest.mark.timeout(420)]

HOST = "ssh.example.test"
CALLBACK = "/cdn-cgi/access/callback"
FIFTY_MB = 50 * 1024 * 1024


@dataclass(frozen=True)
class Provider:
    oidc: OidcProvider
    ca: ServiceCa
    https_port: int


@dataclass
class Site:
    edge: Edge
    account: Account
    sshd: Sshd
    port: int

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    tmp = tmp_path_factory.mktemp("provider")
    ca = write_service_ca(tmp / "pki")
    port = free_port()
    with start_oidc_provider(tmp, [f"https://{HOST}:{port}{CALLBACK}"], tls=ca) as oidc:
        yield Provider(oidc, ca, port)


def _api(account: Account, method: str, path: str, body: object) -> Any:
    status, raw = api_call(
        account,
        method,
        f"/client/v4/accounts/{account.tag}/access/{path}",
        json.dumps(body).encode(),
    )
    answer = json.loads(raw)
    assert status == 200, (status, answer)
    return answer["result"]


@pytest.fixture
def site(provider: Provider, processes: Processes, tmp_path: Path) -> Site:
    # sshd at VERBOSE logs every connection it accepts: how the test knows none came.
    sshd = Sshd(tmp_path, processes, log_level="VERBOSE")
    edge = start_edge(
        processes,
        https=True,
        https_listen=f"127.0.0.1:{provider.https_port}",
        env={"SSL_CERT_FILE": str(provider.ca.ca)},
    )
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "ssh", HOST)
    config = write_config(
        tmp_path / "config.yml", HOST, [{"service": f"ssh://127.0.0.1:{sshd.port}"}]
    )
    start_connector(processes, tunnel, config)
    oidc = provider.oidc
    idp = _api(
        account,
        "POST",
        "identity_providers",
        {
            "name": "Test IdP",
            "type": "oidc",
            "config": {
                "discovery_url": oidc.issuer,
                "client_id": oidc.client_id,
                "client_secret": oidc.client_secret,
                "scopes": ["openid", "email"],
            },
        },
    )
    app = _api(
        account,
        "POST",
        "apps",
        {"name": "Build hosts", "domain": HOST, "allowed_idps": [idp["id"]]},
    )
    _api(
        account,
        "POST",
        f"apps/{app['id']}/policies",
        {
            "name": "example.com staff",
            "decision": "allow",
            "include": [{"email_domain": {"domain": "example.com"}}],
        },
    )
    return Site(edge, account, sshd, provider.https_port)


def _cli_login(site: Site, chromium: Browser, env: dict[str, str]) -> None:
    """``adit access login`` with alice@example.com signing in in the browser."""
    command = [
        *adit_command(),
        "access",
        "login",
        site.url("/"),
        "--edge",
        site.edge.https,
        "--cacert",
        str(site.edge.ca),
        "--timeout",
        "90",
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        cli_url = login_url(proc)
        # Chromium cannot be given the edge's CA: only the browser ignores its errors.
        context = new_context(chromium, ignore_https_errors=True)
        try:
            allow_cli_login(context.new_page(), cli_url, HOST)
        finally:
            context.close()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


def _ssh_options(site: Site) -> list[str]:
    proxy = shlex.join(
        [
            *adit_command(),
            "access",
            "ssh",
            "--hostname",
            "%h",
            "--edge",
            site.edge.https,
            "--cacert",
            str(site.edge.ca),
        ]
    )
    return site.sshd.client_options(proxy)


def _connections(site: Site) -> int:
    return site.sshd.proc.text().count("Connection from 127.0.0.1")


def test_login_then_ssh_and_fifty_megabyte_scp_and_refused_without_login(
    site: Site, chromium: Browser, tmp_path: Path
) -> None:
    user = os.environ.get("USER") or "root"
    options = _ssh_options(site)
    # The one connection so far is Sshd's own readiness probe.
    probes = _connections(site)
    source = tmp_path / "fifty.bin"
    with source.open("wb") as handle:
        for index in range(50):
            handle.write(hashlib.sha256(index.to_bytes(4, "big")).digest() * 32768)
    assert source.stat().st_size == FIFTY_MB
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "copied.bin"

    # No login: nothing to send. ssh fails, its ProxyCommand says why and what to run, and
    # the stream never reached sshd.
    nobody = {**os.environ, "HOME": str(tmp_path / "nobody")}
    refused = subprocess.run(
        ["scp", "-q", *options, str(source), f"{user}@{HOST}:{dest}"],
        capture_output=True,
        text=True,
        env=nobody,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0
    (said,) = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert said.startswith(f"Error: Access refused {HOST} without a login (401: Build hosts is")
    assert f"run `adit access login https://{HOST}`" in said, said
    assert not dest.exists()
    assert _connections(site) == probes

    # Logged in: the stored token goes with the WebSocket, the policy allows alice.
    env = {**os.environ, "HOME": str(tmp_path / "cli-home")}
    _cli_login(site, chromium, env)
    (stored,) = (tmp_path / "cli-home" / ".adit").glob(f"{HOST}-*-token")
    assert stored.stat().st_mode & 0o777 == 0o600

    result = subprocess.run(
        ["ssh", *options, f"{user}@{HOST}", "echo through-access"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["through-access"]
    assert _connections(site) == probes + 1

    result = subprocess.run(
        ["scp", "-q", *options, str(source), f"{user}@{HOST}:{dest}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest

    back = tmp_path / "back.bin"
    result = subprocess.run(
        ["scp", "-q", *options, f"{user}@{HOST}:{dest}", str(back)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
