"""The edge's management tokens and the gate of its management hostname."""

from __future__ import annotations

import datetime
import time
import uuid
from pathlib import Path

import jwt
import pytest

from adit.edge.management_route import (
    BAD_CONNECTOR,
    BAD_TOKEN,
    MISSING_TOKEN,
    NO_CONNECTOR,
    UNKNOWN_PATH,
    WRONG_RESOURCE,
    ManagementAdmission,
    ManagementGate,
)
from adit.edge.management_token import ManagementSigner, TokenRefused
from adit.edge.registry import ConnectionRegistry, LiveConnection

ACCOUNT = "a" * 32


class _Handle:
    full = False

    def close(self, reason: str) -> None:
        pass

    def revalidate(self) -> bool:
        return True

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        return version, None


def _live(
    tunnel: uuid.UUID, account: str = ACCOUNT, client: uuid.UUID | None = None
) -> LiveConnection:
    return LiveConnection(
        tunnel_id=tunnel,
        account_tag=account,
        connection_id=uuid.uuid4(),
        client_id=client or uuid.uuid4(),
        conn_index=0,
        location="tst",
        origin_ip="127.0.0.1",
        opened_at=datetime.datetime.now(datetime.UTC),
        client_version="test",
        arch="test",
        features=(),
        handle=_Handle(),
    )


def test_the_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = ManagementSigner.load_or_create(tmp_path)
    assert (tmp_path / "management-key.pem").stat().st_mode & 0o777 == 0o600
    again = ManagementSigner.load_or_create(tmp_path)
    assert first.key_id == again.key_id
    tunnel = uuid.uuid4()
    token = first.issue(tunnel_id=tunnel, account_tag=ACCOUNT, actor_id="me", resource="logs")
    claims = again.verify(token)
    assert claims.tunnel_id == tunnel and claims.resources == {"logs"}


def test_tokens_expire_and_only_the_edges_key_signs_them(tmp_path: Path) -> None:
    signer = ManagementSigner.load_or_create(tmp_path)
    other = ManagementSigner.load_or_create(tmp_path / "other")
    tunnel = uuid.uuid4()
    old = signer.issue(
        tunnel_id=tunnel,
        account_tag=ACCOUNT,
        actor_id="me",
        resource="logs",
        now=time.time() - 3600,
    )
    with pytest.raises(TokenRefused, match="expired"):
        signer.verify(old)
    foreign = other.issue(tunnel_id=tunnel, account_tag=ACCOUNT, actor_id="me", resource="logs")
    with pytest.raises(TokenRefused):
        signer.verify(foreign)
    with pytest.raises(TokenRefused):
        signer.verify(jwt.encode({"tun": {}}, "k" * 32, algorithm="HS256"))
    with pytest.raises(ValueError, match="resource"):
        signer.issue(tunnel_id=tunnel, account_tag=ACCOUNT, actor_id="me", resource="root")


def test_the_gate_admits_a_connector_of_the_tokens_tunnel_only(tmp_path: Path) -> None:
    signer = ManagementSigner.load_or_create(tmp_path)
    registry = ConnectionRegistry()
    gate = ManagementGate("management.example.com", signer, registry)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    connector = uuid.uuid4()
    registry.add(_live(mine, client=connector))
    registry.add(_live(theirs))
    token = signer.issue(tunnel_id=mine, account_tag=ACCOUNT, actor_id="me", resource="logs")

    admitted = gate.admit(f"/logs?access_token={token}")
    assert isinstance(admitted, ManagementAdmission)
    assert admitted.tunnel_id == mine and admitted.connection.client_id == connector
    assert gate.admit(f"/logs?access_token={token}&connector_id={connector}") == admitted
    assert gate.admit(f"/logs?access_token={token}&connector_id={uuid.uuid4()}") is NO_CONNECTOR
    assert gate.admit(f"/logs?access_token={token}&connector_id=x") is BAD_CONNECTOR
    assert gate.admit("/logs") is MISSING_TOKEN
    assert gate.admit(f"/logs?access_token={token}&access_token={token}") is MISSING_TOKEN
    assert gate.admit(f"/logs?access_token={token[:-3]}abc") is BAD_TOKEN
    assert gate.admit(f"/elsewhere?access_token={token}") is UNKNOWN_PATH
    assert gate.admit(f"/metrics?access_token={token}") is WRONG_RESOURCE  # admin only
    assert isinstance(gate.admit(f"/ping?access_token={token}"), ManagementAdmission)

    # A token naming a tunnel whose connection is another account's: no connector.
    stranger = uuid.uuid4()
    registry.add(_live(stranger, account="b" * 32))
    forged_account = signer.issue(
        tunnel_id=stranger, account_tag=ACCOUNT, actor_id="me", resource="logs"
    )
    assert gate.admit(f"/logs?access_token={forged_account}") is NO_CONNECTOR
