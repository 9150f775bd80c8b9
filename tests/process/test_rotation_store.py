"""Secret rotation in the edge's store and management API (in-process, no child processes)."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from adit.credentials import decode_tunnel_token
from adit.edge.api import EdgeInfo, ManagementApi
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import SecretMatch, Store, TunnelDeleted, TunnelNotFound


class Clock:
    """A settable UTC clock for the store."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Store:
    return Store(tmp_path / "store.sqlite3", clock=clock)


HOUR = datetime.timedelta(hours=1)


def test_both_secrets_until_the_deadline_then_only_the_new(store: Store, clock: Clock) -> None:
    account = store.create_account("acme").tag
    tunnel = store.create_tunnel(account, "web")
    old = tunnel.secret
    rotated, rotation = store.rotate_tunnel_secret(account, tunnel.id, HOUR)
    assert rotated.secret != old and len(rotated.secret) == 32
    assert rotation.expires_at == clock.now + HOUR
    assert store.match_tunnel_secret(tunnel.id, account, rotated.secret) is SecretMatch.CURRENT
    assert store.match_tunnel_secret(tunnel.id, account, old) is SecretMatch.PREVIOUS
    assert store.verify_tunnel_secret(tunnel.id, account, old)
    assert not store.verify_tunnel_secret(tunnel.id, account, b"\0" * 32)
    assert not store.verify_tunnel_secret(tunnel.id, account, b"")
    assert not store.verify_tunnel_secret(tunnel.id, "someone-else", rotated.secret)
    clock.advance(3599)
    assert store.verify_tunnel_secret(tunnel.id, account, old)
    clock.advance(1)
    assert store.rotation(tunnel.id) is None
    assert not store.verify_tunnel_secret(tunnel.id, account, old)
    assert store.verify_tunnel_secret(tunnel.id, account, rotated.secret)


def test_finish_ends_the_window_at_once(store: Store) -> None:
    account = store.create_account("acme").tag
    tunnel = store.create_tunnel(account, "web")
    store.rotate_tunnel_secret(account, tunnel.id, HOUR)
    assert store.rotation(tunnel.id) is not None
    assert store.finish_rotation(tunnel.id) is True
    assert store.finish_rotation(tunnel.id) is False
    assert not store.verify_tunnel_secret(tunnel.id, account, tunnel.secret)


def test_rotating_twice_keeps_only_the_two_newest(store: Store) -> None:
    account = store.create_account("acme").tag
    tunnel = store.create_tunnel(account, "web")
    second, _ = store.rotate_tunnel_secret(account, tunnel.id, HOUR)
    third, _ = store.rotate_tunnel_secret(account, tunnel.id, HOUR)
    assert not store.verify_tunnel_secret(tunnel.id, account, tunnel.secret)
    assert store.match_tunnel_secret(tunnel.id, account, second.secret) is SecretMatch.PREVIOUS
    assert store.match_tunnel_secret(tunnel.id, account, third.secret) is SecretMatch.CURRENT


def test_rotation_errors_and_delete(store: Store) -> None:
    account = store.create_account("acme").tag
    other = store.create_account("other").tag
    tunnel = store.create_tunnel(account, "web")
    with pytest.raises(TunnelNotFound):
        store.rotate_tunnel_secret(other, tunnel.id, HOUR)
    rotated, _ = store.rotate_tunnel_secret(account, tunnel.id, HOUR)
    store.delete_tunnel(account, tunnel.id)
    assert store.rotation(tunnel.id) is None
    assert not store.verify_tunnel_secret(tunnel.id, account, rotated.secret)
    with pytest.raises(TunnelDeleted):
        store.rotate_tunnel_secret(account, tunnel.id, HOUR)


def _call(
    api: ManagementApi, method: str, path: str, token: str, body: object = None
) -> tuple[int, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    raw = json.dumps(body).encode() if body is not None else b""
    status, _, payload = asyncio.run(api.handle(method, path, headers, raw))
    return status, json.loads(payload)


def test_api_rotate_and_finish(store: Store, clock: Clock) -> None:
    account = store.create_account("acme").tag
    token = store.create_api_token(account).token
    tunnel = store.create_tunnel(account, "web")
    api = ManagementApi(store, ConnectionRegistry(), EdgeInfo(("127.0.0.1:7844",), "PEM"))
    base = f"/client/v4/accounts/{account}/cfd_tunnel/{tunnel.id}"

    status, body = _call(api, "POST", f"{base}/rotate", token, {"deadline_seconds": 600})
    assert status == 200, body
    result = body["result"]
    creds = decode_tunnel_token(result["token"])
    assert creds.tunnel_id == tunnel.id and creds.edge == ("127.0.0.1:7844",)
    assert creds.tunnel_secret != tunnel.secret
    assert result["previous_secret_expires_at"] == "2026-01-01T00:10:00Z"
    # `tunnel token` serves the new secret.
    _, shown = _call(api, "GET", f"{base}/token", token)
    assert decode_tunnel_token(shown["result"]).tunnel_secret == creds.tunnel_secret
    assert store.verify_tunnel_secret(tunnel.id, account, tunnel.secret)

    status, body = _call(api, "POST", f"{base}/rotate/finish", token)
    assert status == 200 and body["result"] == {"id": str(tunnel.id), "finished": True}
    assert not store.verify_tunnel_secret(tunnel.id, account, tunnel.secret)

    for bad in ({"deadline_seconds": -1}, {"deadline_seconds": "1h"}, {"deadline_seconds": True}):
        status, body = _call(api, "POST", f"{base}/rotate", token, bad)
        assert status == 400, body
    status, _ = _call(api, "GET", f"{base}/rotate", token)
    assert status == 405
    missing = f"/accounts/{account}/cfd_tunnel/{uuid.uuid4()}/rotate"
    status, _ = _call(api, "POST", missing, token, {})
    assert status == 404
    other = store.create_account("other").tag
    status, _ = _call(api, "POST", f"/accounts/{other}/cfd_tunnel/{tunnel.id}/rotate", token, {})
    assert status == 403
