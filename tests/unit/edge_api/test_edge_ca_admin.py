"""Edge CA files and leaves (real TLS handshakes), and the ``adit edge`` admin commands."""

from __future__ import annotations

import socket
import stat
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509

from adit.edge.admin import ADMIN_COMMANDS
from adit.edge.ca import TUNNEL_SERVER_NAMES, EdgeCA, normalize_fingerprint
from adit.edge.store import Store


def test_ca_created_once_with_private_key_0600(tmp_path: Path) -> None:
    ca = EdgeCA.load_or_create(tmp_path / "state")
    key = tmp_path / "state" / "ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = EdgeCA.load_or_create(tmp_path / "state")
    assert again.fingerprint == ca.fingerprint
    assert "PRIVATE" not in ca.cert_pem
    assert ca.fingerprint.startswith("sha256:")
    assert normalize_fingerprint(ca.fingerprint.upper().replace("SHA256:", "")) == ca.fingerprint


def test_tunnel_leaf_sans() -> None:
    leaf = EdgeCA.generate().tunnel_leaf()
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pem.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert tuple(sans.get_values_for_type(x509.DNSName)) == TUNNEL_SERVER_NAMES


@pytest.mark.parametrize(
    ("server_name", "use_tunnel_leaf"),
    [("h2.cftunnel.com", True), ("probe.cftunnel.com", True), ("localhost", False)],
)
def test_handshake_verifies_against_ca(server_name: str, use_tunnel_leaf: bool) -> None:
    ca = EdgeCA.generate()
    server_ctx = ca.tunnel_server_context() if use_tunnel_leaf else ca.api_server_context()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ca.client_context().wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(timeout=10)
        listener.close()
    assert not errors


def _group() -> click.Group:
    group = click.Group("edge")
    for command in ADMIN_COMMANDS:
        group.add_command(command)
    return group


def test_admin_account_token_ca(tmp_path: Path) -> None:
    runner = CliRunner()
    state = str(tmp_path / "state")
    made = runner.invoke(_group(), ["account", "create", "acme", "--state-dir", state])
    assert made.exit_code == 0, made.output
    tag = made.output.strip()
    assert len(tag) == 32
    issued = runner.invoke(
        _group(),
        ["token", "create", "--account", tag, "--state-dir", state, "--api-url", "https://e:1"],
    )
    assert issued.exit_code == 0, issued.output
    token = issued.output.splitlines()[1]
    ca = EdgeCA.load_or_create(state)
    assert f"--ca-fingerprint {ca.fingerprint}" in issued.output
    assert "adit tunnel login --api-url https://e:1 --api-token " in issued.output
    store = Store.open_in(state)
    try:
        assert store.authenticate(token) == tag
    finally:
        store.close()
    printed = runner.invoke(_group(), ["ca", "--state-dir", state])
    assert printed.output == ca.cert_pem
    unknown = runner.invoke(
        _group(), ["token", "create", "--account", "0" * 32, "--state-dir", state]
    )
    assert unknown.exit_code == 1
    listed = runner.invoke(_group(), ["account", "list"], env={"ADIT_EDGE_STATE_DIR": state})
    assert tag in listed.output
