"""ManagementApi.handle: every endpoint, envelopes, auth, account isolation, cascade delete."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adit.credentials import decode_tunnel_token
from adit.edge.api import EdgeInfo, ManagementApi
from adit.edge.ca import EdgeCA
from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import STORE_FILE, Store


@dataclass
class RecordingHandle:
    """A connection's session as the registry sees it: records close() calls."""

    closed: list[str] = field(default_factory=list)

    def close(self, reason: str) -> None:
        self.closed.append(reason)

    def revalidate(self) -> bool:
        return True

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        return version, None

    @property
    def full(self) -> bool:
        return False


@dataclass
class Env:
    api: ManagementApi
    store: Store
    registry: ConnectionRegistry
    account: str
    token: str
    other_account: str
    other_token: str
    ca_pem: str

    def call(
        self,
        method: str,
        target: str,
        body: object = None,
        token: str | None = None,
    ) -> tuple[int, dict[str, Any] | bytes]:
        headers = [(b"authorization", f"Bearer {token or self.token}".encode())]
        raw = b"" if body is None else json.dumps(body).encode()
        status, resp_headers, payload = asyncio.run(self.api.handle(method, target, headers, raw))
        if (b"content-type", b"application/json") in resp_headers:
            return status, json.loads(payload)
        return status, payload

    def tunnels(self, account: str | None = None) -> str:
        return f"/accounts/{account or self.account}/cfd_tunnel"


CA = EdgeCA.generate()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = Store.open_in(tmp_path)
    registry = ConnectionRegistry()
    info = EdgeInfo(tunnel_addresses=("127.0.0.1:7844",), ca_pem=CA.cert_pem)
    a = store.create_account("a").tag
    b = store.create_account("b").tag
    yield Env(
        api=ManagementApi(store, registry, info),
        store=store,
        registry=registry,
        account=a,
        token=store.create_api_token(a).token,
        other_account=b,
        other_token=store.create_api_token(b).token,
        ca_pem=CA.cert_pem,
    )
    store.close()


def live(tunnel_id: uuid.UUID, account: str, client: uuid.UUID, index: int) -> LiveConnection:
    return LiveConnection(
        tunnel_id=tunnel_id,
        account_tag=account,
        connection_id=uuid.uuid4(),
        client_id=client,
        conn_index=index,
        location="ams01" if index % 2 == 0 else "fra08",
        origin_ip="198.51.100.7",
        opened_at=datetime.datetime(2026, 11, 25, 9, 59, tzinfo=datetime.UTC),
        client_version="2026.8.2",
        arch="linux_amd64",
        features=("serialized_headers",),
        handle=RecordingHandle(),
    )


def create(env: Env, name: str = "web", **extra: object) -> dict[str, Any]:
    status, body = env.call("POST", env.tunnels(), {"name": name, **extra})
    assert status == 200, body
    assert isinstance(body, dict)
    result: dict[str, Any] = body["result"]
    return result


def test_ca_pem_is_public(env: Env) -> None:
    status, _, payload = asyncio.run(env.api.handle("GET", "/adit/v1/ca.pem", [], b""))
    assert status == 200
    assert payload.decode() == env.ca_pem
    assert b"PRIVATE" not in payload


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer nope")],
        [(b"authorization", b"Basic abc")],
        [(b"authorization", b"Bearer ")],
    ],
)
def test_auth_required(env: Env, headers: list[tuple[bytes, bytes]]) -> None:
    status, _, payload = asyncio.run(env.api.handle("GET", env.tunnels(), headers, b""))
    assert status == 401
    body = json.loads(payload)
    assert body["success"] is False
    assert body["errors"] == [{"code": 10000, "message": "Authentication error"}]


def test_edge_info(env: Env) -> None:
    status, body = env.call("GET", "/adit/v1/edge")
    assert status == 200
    assert isinstance(body, dict)
    assert body["result"]["tunnel_addresses"] == ["127.0.0.1:7844"]
    assert body["result"]["account_tag"] == env.account


def test_create_get_list_with_prefix(env: Env) -> None:
    secret = base64.b64encode(bytes(range(32))).decode()
    tunnel = create(env, "web", tunnel_secret=secret)
    assert set(tunnel) >= {"id", "name", "created_at", "deleted_at", "connections", "token"}
    assert tunnel["deleted_at"] is None
    assert tunnel["connections"] == []
    creds = decode_tunnel_token(tunnel["token"])
    assert creds.tunnel_secret == bytes(range(32))
    assert creds.account_tag == env.account
    assert creds.edge == ("127.0.0.1:7844",)
    assert creds.edge_ca_pem == env.ca_pem
    status, got = env.call("GET", f"/client/v4{env.tunnels()}/{tunnel['id']}")
    assert status == 200
    assert isinstance(got, dict)
    assert got["result"]["name"] == "web"
    status, listed = env.call("GET", env.tunnels() + "?is_deleted=false&name=web")
    assert isinstance(listed, dict)
    assert [t["id"] for t in listed["result"]] == [tunnel["id"]]
    assert listed["result_info"]["count"] == 1


def test_create_errors(env: Env) -> None:
    create(env, "web")
    status, body = env.call("POST", env.tunnels(), {"name": "web"})
    assert status == 409
    status, body = env.call("POST", env.tunnels(), {"name": str(uuid.uuid4())})
    assert status == 400
    assert isinstance(body, dict)
    assert body["errors"][0]["message"] == "you cannot use UUIDs as tunnel names"
    short = base64.b64encode(b"x").decode()
    status, body = env.call("POST", env.tunnels(), {"name": "n", "tunnel_secret": short})
    assert status == 400
    status, _, _ = asyncio.run(
        env.api.handle(
            "POST", env.tunnels(), [(b"authorization", f"Bearer {env.token}".encode())], b"{"
        )
    )
    assert status == 400
    status, _, _ = asyncio.run(
        env.api.handle(
            "POST",
            env.tunnels(),
            [(b"authorization", f"Bearer {env.token}".encode())],
            b" " * (2 << 20),
        )
    )
    assert status == 413


def test_paging(env: Env) -> None:
    for i in range(5):
        create(env, f"t{i}")
    _, body = env.call("GET", env.tunnels() + "?per_page=2&page=3")
    assert isinstance(body, dict)
    assert len(body["result"]) == 1
    assert body["result_info"] == {
        "count": 1,
        "page": 3,
        "per_page": 2,
        "total_count": 5,
        "total_pages": 3,
    }


def test_other_account_is_invisible(env: Env) -> None:
    tunnel = create(env, "web")
    other = env.other_token
    # Naming the other account in the path is refused outright.
    status, _ = env.call("GET", env.tunnels(), token=other)
    assert status == 403
    status, _ = env.call("DELETE", f"{env.tunnels()}/{tunnel['id']}", token=other)
    assert status == 403
    # Through its own account path, the tunnel does not exist.
    own = env.tunnels(env.other_account)
    for method, suffix in [
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/connections"),
        ("DELETE", "/connections"),
        ("GET", "/token"),
    ]:
        status, _ = env.call(method, f"{own}/{tunnel['id']}{suffix}", token=other)
        assert status == 404, (method, suffix)
    status, _ = env.call(
        "PUT",
        f"/zones/{env.other_account}/tunnels/{tunnel['id']}/routes",
        {"type": "dns", "user_hostname": "x.example.com", "overwrite_existing": True},
        token=other,
    )
    assert status == 404
    status, _ = env.call(
        "PUT",
        f"/zones/{env.account}/tunnels/{tunnel['id']}/routes",
        {"type": "dns", "user_hostname": "x.example.com", "overwrite_existing": True},
        token=other,
    )
    assert status == 403
    assert env.store.routes(env.account) == []


def test_connections_shape_and_cleanup(env: Env) -> None:
    tunnel = create(env, "web")
    tid = uuid.UUID(tunnel["id"])
    c1, c2 = uuid.uuid4(), uuid.uuid4()
    conns = [live(tid, env.account, c1, 0), live(tid, env.account, c1, 1)]
    conns.append(live(tid, env.account, c2, 2))
    for conn in conns:
        env.registry.add(conn)
    status, body = env.call("GET", f"{env.tunnels()}/{tid}/connections")
    assert status == 200
    assert isinstance(body, dict)
    clients = {c["id"]: c for c in body["result"]}
    assert set(clients) == {str(c1), str(c2)}
    first = clients[str(c1)]
    assert first["arch"] == "linux_amd64"
    assert first["version"] == "2026.8.2"
    assert first["run_at"] == "2026-11-25T09:59:00Z"
    assert {c["colo_name"] for c in first["conns"]} == {"ams01", "fra08"}
    assert set(first["conns"][0]) >= {
        "colo_name",
        "id",
        "is_pending_reconnect",
        "origin_ip",
        "opened_at",
    }
    status, listed = env.call("GET", env.tunnels())
    assert isinstance(listed, dict)
    assert len(listed["result"][0]["connections"]) == 3
    status, _ = env.call("DELETE", f"{env.tunnels()}/{tid}/connections?client_id=nope")
    assert status == 400
    status, _ = env.call("DELETE", f"{env.tunnels()}/{tid}/connections?client_id={c2}")
    assert status == 200
    handle = conns[2].handle
    assert isinstance(handle, RecordingHandle)
    assert handle.closed
    assert len(env.registry.connections(tid)) == 2


def test_delete_refused_while_live_then_cascade(env: Env) -> None:
    tunnel = create(env, "web")
    tid = uuid.UUID(tunnel["id"])
    conn = live(tid, env.account, uuid.uuid4(), 0)
    env.registry.add(conn)
    status, body = env.call("DELETE", f"{env.tunnels()}/{tid}")
    assert status == 400
    assert isinstance(body, dict)
    assert body["errors"][0]["code"] == 1022
    assert env.store.get_tunnel(env.account, tid) is not None
    status, body = env.call("DELETE", f"{env.tunnels()}/{tid}?cascade=true")
    assert status == 200
    assert isinstance(body, dict)
    assert body["result"]["deleted_at"] is not None
    assert isinstance(conn.handle, RecordingHandle)
    assert conn.handle.closed
    assert env.registry.connections(tid) == []
    status, body = env.call("DELETE", f"{env.tunnels()}/{tid}")
    assert status == 400
    status, body = env.call("GET", f"{env.tunnels()}/{tid}/token")
    assert status == 400


def test_token_endpoint(env: Env) -> None:
    tunnel = create(env, "web")
    status, body = env.call("GET", f"{env.tunnels()}/{tunnel['id']}/token")
    assert status == 200
    assert isinstance(body, dict)
    creds = decode_tunnel_token(body["result"])
    assert str(creds.tunnel_id) == tunnel["id"]


def test_routes(env: Env) -> None:
    t1 = create(env, "one")
    t2 = create(env, "two")
    path1 = f"/zones/{env.account}/tunnels/{t1['id']}/routes"
    path2 = f"/zones/{env.account}/tunnels/{t2['id']}/routes"
    dns = {"type": "dns", "user_hostname": "app.example.com", "overwrite_existing": False}
    status, body = env.call("PUT", path1, dns)
    assert status == 403  # no zone holds it yet
    assert isinstance(body, dict)
    assert body["errors"][0]["code"] == 9109
    assert "administrator" in body["errors"][0]["message"]
    env.store.add_zone(env.account, "example.com")
    status, body = env.call("PUT", path1, dns)
    assert status == 200
    assert isinstance(body, dict)
    assert body["result"] == {"cname": "new", "name": "app.example.com"}
    status, body = env.call("PUT", path1, dns)
    assert isinstance(body, dict)
    assert body["result"]["cname"] == "unchanged"
    status, body = env.call("PUT", path2, dns)
    assert status == 409
    status, body = env.call("PUT", path2, {**dns, "overwrite_existing": True})
    assert isinstance(body, dict)
    assert body["result"]["cname"] == "updated"
    for bad in ("bad host", "*.com", "com", "a" * 64 + ".example.com", 5):
        status, body = env.call("PUT", path1, {**dns, "user_hostname": bad})
        assert status == 400, bad
    status, body = env.call("PUT", path1, {"type": "lb", "lb_name": "x", "lb_pool": "p"})
    assert status == 400
    status, body = env.call("PUT", path1, {**dns, "user_hostname": "*.example.com"})
    assert status == 200
    assert env.store.tunnel_for_hostname("zz.example.com") == (uuid.UUID(t1["id"]), env.account)


def test_unknown_paths_and_methods(env: Env) -> None:
    status, body = env.call("GET", "/nope")
    assert status == 404
    assert isinstance(body, dict)
    assert body["errors"][0]["code"] == 7003
    status, _ = env.call("PATCH", env.tunnels())
    assert status == 405
    status, _ = env.call("GET", f"{env.tunnels()}/not-a-uuid")
    assert status == 400


def test_a_locked_store_answers_writes_503_and_reads_as_usual(tmp_path: Path) -> None:
    store = Store.open_in(tmp_path, write_timeout=0.2)
    account = store.create_account("a").tag
    token = store.create_api_token(account).token
    info = EdgeInfo(tunnel_addresses=("127.0.0.1:7844",), ca_pem=CA.cert_pem)
    api = ManagementApi(store, ConnectionRegistry(), info)
    headers = [(b"authorization", f"Bearer {token}".encode())]
    path = f"/accounts/{account}/cfd_tunnel"
    other = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        status, _, _ = asyncio.run(api.handle("GET", path, headers, b""))
        assert status == 200
        status, _, payload = asyncio.run(api.handle("POST", path, headers, b'{"name": "x"}'))
        assert status == 503
        error = json.loads(payload)["errors"][0]
        assert error["code"] == 10013 and "try again" in error["message"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    status, _, _ = asyncio.run(api.handle("POST", path, headers, b'{"name": "x"}'))
    assert status == 200
    store.close()


def test_a_bug_of_ours_is_a_500_in_the_envelope(env: Env) -> None:
    class Broken(ConnectionRegistry):
        def connections(self, tunnel_id: uuid.UUID) -> list[LiveConnection]:
            raise RuntimeError("a bug")

    tunnel = create(env)
    info = EdgeInfo(tunnel_addresses=("127.0.0.1:7844",), ca_pem=CA.cert_pem)
    api = ManagementApi(env.store, Broken(), info)
    headers = [(b"authorization", f"Bearer {env.token}".encode())]
    target = f"{env.tunnels()}/{tunnel['id']}"
    status, _, payload = asyncio.run(api.handle("GET", target, headers, b""))
    assert status == 500
    assert json.loads(payload)["errors"] == [{"code": 10001, "message": "Internal error"}]
