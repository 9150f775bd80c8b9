"""The real ``adit tunnel`` CLI (subprocesses) against the API over real TLS on 127.0.0.1."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adit.credentials import decode_tunnel_token, load_credentials_file, read_origin_cert
from adit.edge.registry import LiveConnection

ADIT = str(Path(sys.executable).parent / "adit")


@dataclass
class Handle:
    closed: bool = False

    def close(self, reason: str) -> None:
        self.closed = True

    def revalidate(self) -> bool:
        return True

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        return version, None

    @property
    def full(self) -> bool:
        return False


@dataclass
class Cli:
    home: Path
    #: conftest.ApiServer (conftest modules cannot be imported under importlib mode).
    server: Any

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNNEL_", "ADIT_"))}
        env["HOME"] = str(self.home)
        return subprocess.run(
            [ADIT, *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def cli(api_server: Any, tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home, api_server)


def login(cli: Cli) -> str:
    account: str = cli.server.store.create_account("acme").tag
    token = cli.server.store.create_api_token(account).token
    result = cli.run(
        "tunnel",
        "login",
        "--api-url",
        cli.server.url,
        "--api-token",
        token,
        "--ca-fingerprint",
        cli.server.ca.fingerprint,
    )
    assert result.returncode == 0, result.stderr
    return account


def test_login_pins_ca_and_writes_cert(cli: Cli) -> None:
    account = login(cli)
    cert_path = cli.home / ".adit" / "cert.pem"
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.parent.stat().st_mode) == 0o700
    cert = read_origin_cert(cert_path)
    assert cert.account_id == cert.zone_id == account
    assert cert.api_url == cli.server.url
    assert cert.edge_ca_pem.strip() == cli.server.ca.cert_pem.strip()
    # A second login keeps the existing cert and fails (cloudflared's message, exit 1).
    before = cert_path.read_bytes()
    again = cli.run("tunnel", "login", "--api-url", cli.server.url, "--api-token", "x")
    assert again.returncode == 1
    assert f"You have an existing certificate at {cert_path} which login would overwrite" in (
        again.stderr
    )
    assert "please move or delete that file" in again.stderr
    assert cert_path.read_bytes() == before


def test_login_rejects_wrong_fingerprint_and_bad_token(cli: Cli) -> None:
    account = cli.server.store.create_account("acme").tag
    token = cli.server.store.create_api_token(account).token
    wrong = cli.run(
        "tunnel", "login", "--api-url", cli.server.url, "--api-token", token,
        "--ca-fingerprint", "sha256:" + "00" * 32,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "refusing to trust it" in wrong.stderr
    bad = cli.run(
        "tunnel", "login", "--api-url", cli.server.url, "--api-token", "adit.x.y",
        "--ca-fingerprint", cli.server.ca.fingerprint,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "Authentication error" in bad.stderr
    assert not (cli.home / ".adit" / "cert.pem").exists()


def test_create_route_list_info_token_cleanup_delete(cli: Cli) -> None:
    account = login(cli)
    created = cli.run("tunnel", "create", "web")
    assert created.returncode == 0, created.stderr
    tunnel = cli.server.store.list_tunnels(account)[0]
    creds_path = cli.home / ".adit" / f"{tunnel.id}.json"
    assert created.stdout == (
        f"Tunnel credentials written to {creds_path}. adit chose this file based on where your "
        "origin certificate was found. Keep this file secret. To revoke these credentials, "
        f"delete the tunnel.\n\nCreated tunnel web with id {tunnel.id}\n"
    )
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o400
    creds = load_credentials_file(creds_path)
    assert creds.tunnel_secret == tunnel.secret
    assert creds.account_tag == account
    assert creds.edge == ("127.0.0.1:7844",)
    assert creds.edge_ca_pem == cli.server.ca.cert_pem

    conflict = cli.run("tunnel", "create", "web")
    assert conflict.returncode == 1
    assert conflict.stderr.strip() == (
        "failed to create tunnel: Create Tunnel API call failed: tunnel with name already exists"
    )

    outside = cli.run("tunnel", "route", "dns", "web", "app.example.com")
    assert outside.returncode == 1
    assert outside.stderr.strip() == (
        "Failed to add route: code: 9109, reason: app.example.com is not in a zone of this "
        "account: ask the edge's administrator to add the zone (adit edge zone add --account "
        f"{account} example.com)"
    )
    cli.server.store.add_zone(account, "example.com")
    routed = cli.run("tunnel", "route", "dns", "web", "app.example.com")
    assert routed.returncode == 0, routed.stderr
    assert "INF Added CNAME app.example.com which will route to this tunnel" in routed.stderr
    assert f"tunnelID={tunnel.id}" in routed.stderr
    again = cli.run("tunnel", "route", "dns", str(tunnel.id), "app.example.com")
    assert "app.example.com is already configured to route to your tunnel" in again.stderr
    invalid = cli.run("tunnel", "route", "dns", "web", "bad host")
    assert invalid.returncode == 1
    assert invalid.stderr.strip() == "bad host is not a valid hostname"
    usage = cli.run("tunnel", "route", "dns", "web")
    assert usage.returncode == 255
    assert 'expects the format "adit tunnel route dns <tunnel name/id> <hostname>"' in (
        usage.stderr
    )

    client_id = uuid.uuid4()
    for index, colo in enumerate(["ams01", "ams01", "fra08"]):
        cli.server.registry.add(
            LiveConnection(
                tunnel_id=tunnel.id,
                account_tag=account,
                connection_id=uuid.uuid4(),
                client_id=client_id,
                conn_index=index,
                location=colo,
                origin_ip="198.51.100.7",
                opened_at=datetime.datetime(2026, 11, 25, 9, 59, tzinfo=datetime.UTC),
                client_version="2026.8.2",
                arch="linux_amd64",
                features=(),
                handle=Handle(),
            )
        )
    cli.server.store.create_tunnel(account, "idle")
    listed = cli.run("tunnel", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == (
        "You can obtain more detailed information for each tunnel with "
        "`adit tunnel info <name/uuid>`"
    )
    assert lines[1].startswith("ID                                   NAME CREATED ")
    assert lines[1].endswith("CONNECTIONS      ")
    assert lines[2].split()[1] == "idle"
    assert lines[3].endswith(" 2xams01, 1xfra08 ")
    as_json = json.loads(cli.run("tunnel", "list", "-o", "json", "-n", "web").stdout)
    assert [t["name"] for t in as_json] == ["web"]
    assert set(as_json[0]) == {"id", "name", "created_at", "deleted_at", "connections"}
    assert as_json[0]["deleted_at"] == "0001-01-01T00:00:00Z"

    info = cli.run("tunnel", "info", "web")
    assert info.returncode == 0, info.stderr
    info_lines = info.stdout.splitlines()
    assert info_lines[0] == "NAME:     web"
    assert info_lines[1] == f"ID:       {tunnel.id}"
    assert info_lines[2].startswith("CREATED:  ") and info_lines[2].endswith(" +0000 UTC")
    assert info_lines[4].split() == [
        "CONNECTOR", "ID", "CREATED", "ARCHITECTURE", "VERSION", "ORIGIN", "IP", "EDGE",
        "PROTOCOL",
    ]  # fmt: skip
    assert info_lines[5].split(maxsplit=4)[:4] == [
        str(client_id), "2026-11-25T09:59:00Z", "linux_amd64", "2026.8.2",
    ]  # fmt: skip
    # Connections the API does not say the protocol of are HTTP/2 (an older edge's).
    assert info_lines[5].endswith("198.51.100.7 2xams01, 1xfra08 3xhttp2  ")
    unknown = cli.run("tunnel", "info", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "error parsing tunnel ID: nope is neither the ID nor the name of any of your tunnels"
    )

    token = cli.run("tunnel", "token", "web")
    assert token.returncode == 0, token.stderr
    assert decode_tunnel_token(token.stdout.strip()).tunnel_secret == tunnel.secret
    out_file = cli.home / "from-token.json"
    wrote = cli.run("tunnel", "token", "--cred-file", str(out_file), "web")
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout == ""
    assert load_credentials_file(out_file).tunnel_id == tunnel.id

    refused = cli.run("tunnel", "delete", "web")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"Error deleting tunnel {tunnel.id}: Failed to delete tunnel")

    bad_connector = cli.run("tunnel", "cleanup", "-c", "notuuid", "web")
    assert bad_connector.returncode == 1
    assert bad_connector.stderr.strip() == (
        "notuuid is not a valid client ID (must be a UUID): invalid UUID length: 7"
    )
    cleaned = cli.run("tunnel", "cleanup", "web")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"Cleanup connection for tunnel {tunnel.id}" in cleaned.stderr
    assert cli.server.registry.connections(tunnel.id) == []

    deleted = cli.run("tunnel", "delete", "web")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == ""
    assert not creds_path.exists()
    assert cli.server.store.tunnel_for_hostname("app.example.com") is None
    gone = cli.run("tunnel", "delete", str(tunnel.id))
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"Tunnel {tunnel.id} has already been deleted"


def test_force_delete_closes_live_connections(cli: Cli) -> None:
    account = login(cli)
    assert cli.run("tunnel", "create", "web").returncode == 0
    tunnel = cli.server.store.list_tunnels(account)[0]
    handle = Handle()
    cli.server.registry.add(
        LiveConnection(
            tunnel_id=tunnel.id,
            account_tag=account,
            connection_id=uuid.uuid4(),
            client_id=uuid.uuid4(),
            conn_index=0,
            location="adit",
            origin_ip="127.0.0.1",
            opened_at=datetime.datetime.now(datetime.UTC),
            client_version="x",
            arch="linux_amd64",
            features=(),
            handle=handle,
        )
    )
    result = cli.run("tunnel", "delete", "-f", "web")
    assert result.returncode == 0, result.stderr
    assert handle.closed


def test_usage_errors_and_missing_cert(cli: Cli) -> None:
    usage = cli.run("tunnel", "create")
    assert usage.returncode == 255
    assert usage.stderr.splitlines()[0] == (
        '"adit tunnel create" requires exactly 1 argument, the name of tunnel to create.'
    )
    no_cert = cli.run("tunnel", "create", "web")
    assert no_cert.returncode == 1
    assert "Cannot determine default origin certificate path." in no_cert.stderr
    assert no_cert.stderr.splitlines()[-1] == (
        "failed to create tunnel: couldn't create client to talk to the adit edge: "
        "Error locating origin cert: client didn't specify origincert path"
    )
    empty = cli.run("tunnel", "list", "--origincert", str(cli.home / "missing.pem"))
    assert empty.returncode == 1


def test_list_empty_and_create_with_options(cli: Cli) -> None:
    login(cli)
    empty = cli.run("tunnel", "list")
    assert empty.stdout == (
        "No tunnels were found for the given filter flags. You can use 'adit tunnel create' "
        "to create a tunnel.\n"
    )
    short = cli.run("tunnel", "create", "-s", "c2hvcnQ=", "x")
    assert short.returncode == 1
    assert short.stderr.strip() == (
        "failed to create tunnel: Decoded tunnel secret must be at least 32 bytes long"
    )
    target = cli.home / "mine.json"
    made = cli.run("tunnel", "create", "--cred-file", str(target), "-o", "json", "named")
    assert made.returncode == 0, made.stderr
    shown = json.loads(made.stdout)
    assert shown["name"] == "named"
    assert set(shown) == {"id", "name", "created_at", "deleted_at", "connections", "token"}
    assert load_credentials_file(target).tunnel_id == uuid.UUID(shown["id"])
