"""``/cdn-cgi/access/cert_sign`` through the gate and the login flow with a real in-memory
store: on the application's hostname and on the team domain (where cloudflared's ssh-gen
asks), refused without a CA, for a token of no application, for a key it cannot certify, and
once the policies no longer allow the user."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

from adit.edge.access.decisions import DecisionLog
from adit.edge.access.gate import AccessGate, FlowRequest
from adit.edge.access.login_flow import LoginFlow
from adit.edge.access.ssh_ca import SshCas
from adit.edge.pages import ErrorPage
from adit.edge.store import Store

HOST = "ssh.example.test"
TEAM = "team.example.net"


@pytest.fixture
def store() -> Iterator[Store]:
    opened = Store(":memory:")
    yield opened
    opened.close()


def _public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _ask(gate: AccessGate, host: str, body: dict[str, str]) -> tuple[int, dict[str, object]]:
    flow = gate.check(host, "/cdn-cgi/access/cert_sign", [], "192.0.2.1", "ray")
    assert isinstance(flow, FlowRequest)

    async def post() -> ErrorPage:
        return await gate.login_flow(flow, "POST", json.dumps(body).encode())

    page = asyncio.run(post())
    answer = json.loads(page.render(host, "ray"))
    assert isinstance(answer, dict)
    return page.status, answer


def test_cert_sign_on_the_app_host_and_the_team_domain(store: Store) -> None:
    account = store.create_account("acme").tag
    store.add_zone(account, "example.test")
    store.access.set_auth_domain(account, TEAM)
    app = store.access.create_app(account, {"name": "Build hosts", "domain": HOST})
    policy = store.access.create_policy(
        account,
        app.id,
        {"name": "staff", "decision": "allow", "include": [{"email": {"email": "al@example.com"}}]},
    )
    gate = AccessGate(store.access, DecisionLog(store.access.db))
    gate.login_flow = LoginFlow(gate, store.access)
    token = gate.mint_session(app, email="al@example.com", sub="al")
    ask = {"public_key": _public_key(), "jwt": token, "issuer": f"https://{TEAM}"}

    status, answer = _ask(gate, HOST, ask)
    assert (status, answer["status"]) == (404, 404)  # no CA yet
    SshCas(store.access).create(account, app.id)
    for host in (HOST, TEAM):
        status, answer = _ask(gate, host, ask)
        assert status == 200, answer
        cert = load_ssh_public_identity(str(answer["certificate"]).encode())
        assert isinstance(cert, SSHCertificate) and cert.valid_principals == [b"al"]
        assert set(answer) == {"id", "certificate", "expires_at"}

    assert _ask(gate, HOST, {**ask, "jwt": "a.b.c"})[0] == 401
    assert _ask(gate, HOST, {**ask, "public_key": "ssh-rsa AAAA"})[0] == 400
    assert _ask(gate, HOST, {"jwt": token})[0] == 400
    # The policy changes: the same live session gets no certificate any more.
    store.access.update_policy(
        account,
        app.id,
        policy.id,
        {"name": "staff", "decision": "allow", "include": [{"email": {"email": "x@example.com"}}]},
    )
    status, answer = _ask(gate, HOST, ask)
    assert status == 403 and "denied" in str(answer["message"])
