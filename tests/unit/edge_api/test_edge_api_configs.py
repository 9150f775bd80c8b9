"""``/accounts/{a}/cfd_tunnel/{id}/configurations``: Cloudflare's shapes, validation, versions
per tunnel that survive a restart, authorisation, and the per-connection push report."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adit.edge.api import EdgeInfo, ManagementApi
from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import Store

CONFIG = {
    "ingress": [
        {"hostname": "app.example.test", "service": "http://127.0.0.1:8080"},
        {"service": "http_status:404"},
    ],
    "originRequest": {"connectTimeout": 10},
    "warp-routing": {"enabled": False},
}


@dataclass
class Connector:
    """A connection's session as the pusher sees it: answers like a connector would."""

    runs: int = -1
    refuse: str | None = None
    broken: bool = False
    seen: list[int] = field(default_factory=list)

    def close(self, reason: str) -> None:
        pass

    def revalidate(self) -> bool:
        return True

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        self.seen.append(version)
        json.loads(config)  # what it was sent is JSON
        if self.broken:
            raise ConnectionResetError("tunnel connection is closed")
        if self.refuse is not None:
            return self.runs, self.refuse
        self.runs = max(self.runs, version)
        return self.runs, None

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
    other_token: str
    tunnel: uuid.UUID

    def call(
        self, method: str, body: object = None, *, token: str | None = None, raw: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        headers = [(b"authorization", f"Bearer {token or self.token}".encode())]
        data = raw or (b"" if body is None else json.dumps(body).encode())
        target = f"/client/v4/accounts/{self.account}/cfd_tunnel/{self.tunnel}/configurations"
        status, _, payload = asyncio.run(self.api.handle(method, target, headers, data))
        answer: dict[str, Any] = json.loads(payload)
        return status, answer

    def connect(self, connector: Connector, index: int = 0) -> LiveConnection:
        conn = LiveConnection(
            tunnel_id=self.tunnel,
            account_tag=self.account,
            connection_id=uuid.uuid4(),
            client_id=uuid.uuid4(),
            conn_index=index,
            location="test",
            origin_ip="127.0.0.1",
            opened_at=datetime.datetime.now(datetime.UTC),
            client_version="2026.1.0",
            arch="linux_amd64",
            features=(),
            handle=connector,
        )
        self.registry.add(conn)
        return conn


def _env(path: Path) -> Env:
    store = Store.open_in(path)
    registry = ConnectionRegistry()
    api = ManagementApi(store, registry, EdgeInfo(("127.0.0.1:7844",), "PEM"))
    account = store.create_account("a").tag
    other = store.create_account("b").tag
    tunnel = store.create_tunnel(account, "web")
    return Env(
        api,
        store,
        registry,
        account,
        store.create_api_token(account).token,
        store.create_api_token(other).token,
        tunnel.id,
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = _env(tmp_path)
    yield made
    made.store.close()


def test_put_stores_versions_in_cloudflares_shape(env: Env) -> None:
    status, answer = env.call("GET")
    assert status == 200
    assert answer["result"]["version"] == 0
    assert answer["result"]["config"] is None
    assert answer["result"]["source"] == "local"

    status, answer = env.call("PUT", {"config": CONFIG})
    assert status == 200, answer
    assert answer["success"] is True and answer["errors"] == [] and answer["messages"] == []
    result = answer["result"]
    assert result["tunnel_id"] == str(env.tunnel)
    assert result["account_id"] == env.account
    assert result["version"] == 1
    assert result["config"] == CONFIG
    assert result["source"] == "cloudflare"
    assert result["created_at"].endswith("Z")
    assert result["pushes"] == []

    assert env.call("PUT", {"config": CONFIG})[1]["result"]["version"] == 2
    status, answer = env.call("GET")
    assert (status, answer["result"]["version"], answer["result"]["config"]) == (200, 2, CONFIG)
    # Cloudflare marks the tunnel remotely managed.
    tunnel = env.store.get_tunnel(env.account, env.tunnel)
    assert tunnel is not None and tunnel.remote_config


def test_versions_keep_growing_across_a_restart(tmp_path: Path) -> None:
    first = _env(tmp_path)
    first.call("PUT", {"config": CONFIG})
    first.call("PUT", {"config": CONFIG})
    first.store.close()
    store = Store.open_in(tmp_path)
    try:
        api = ManagementApi(store, ConnectionRegistry(), EdgeInfo(("127.0.0.1:7844",), "PEM"))
        again = Env(
            api,
            store,
            ConnectionRegistry(),
            first.account,
            first.token,
            first.other_token,
            first.tunnel,
        )
        assert again.call("GET")[1]["result"]["version"] == 2
        assert again.call("PUT", {"config": CONFIG})[1]["result"]["version"] == 3
    finally:
        store.close()


BIG = {"ingress": [{"service": "http_status:404", "path": "x" * 300_000}]}
MANY = {
    "ingress": [
        *({"hostname": f"h{i}.example.test", "service": "http_status:200"} for i in range(1001)),
        {"service": "http_status:404"},
    ]
}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "config is required"),
        ({"config": []}, "config must be a JSON object"),
        (
            {"config": {"ingress": [{"hostname": "a.example.test", "service": "http://x"}]}},
            "last ingress rule must match all URLs",
        ),
        (
            {"config": {"ingress": [{"service": "bogus"}]}},
            "bogus is an invalid address",
        ),
        (
            {"config": {"ingress": [{"service": "http_status:404"}], "originRequest": []}},
            "originRequest",
        ),
        ({"config": BIG}, "larger than 256 KiB"),
        ({"config": MANY}, "more than 1000 ingress rules"),
    ],
)
def test_a_bad_configuration_is_refused_and_the_stored_one_stays(
    env: Env, body: dict[str, Any], message: str
) -> None:
    env.call("PUT", {"config": CONFIG})
    status, answer = env.call("PUT", body)
    assert status == 400, answer
    assert answer["success"] is False and answer["result"] is None
    assert answer["errors"][0]["code"] == 1001
    assert message in answer["errors"][0]["message"], answer
    stored = env.call("GET")[1]["result"]
    assert (stored["version"], stored["config"]) == (1, CONFIG)


def test_not_json_is_refused(env: Env) -> None:
    status, answer = env.call("PUT", raw=b"{not json")
    assert status == 400 and answer["success"] is False


def test_authorised_like_the_other_tunnel_endpoints(env: Env) -> None:
    assert env.call("GET", token="adit_wrong")[0] == 401
    assert env.call("PUT", {"config": CONFIG}, token=env.other_token)[0] == 403
    assert env.call("POST", {"config": CONFIG})[0] == 405
    unknown = Env(
        env.api,
        env.store,
        env.registry,
        env.account,
        env.token,
        env.other_token,
        uuid.uuid4(),
    )
    assert unknown.call("PUT", {"config": CONFIG})[0] == 404
    env.store.delete_tunnel(env.account, env.tunnel)
    status, answer = env.call("PUT", {"config": CONFIG})
    assert status == 400, answer


def test_each_connection_is_pushed_to_and_refusals_are_reported(env: Env) -> None:
    applies = Connector()
    refuses = Connector(refuse="this connector is locally managed")
    broken = Connector(broken=True)
    draining = Connector()
    env.connect(applies, 0)
    env.connect(refuses, 1)
    env.connect(broken, 2)
    env.connect(draining, 3).draining = True

    status, answer = env.call("PUT", {"config": CONFIG})
    assert status == 200, answer
    by_index = {p["conn_index"]: p for p in answer["result"]["pushes"]}
    assert sorted(by_index) == [0, 1, 2]  # a draining connection is not pushed to
    assert by_index[0]["status"] == "applied" and by_index[0]["applied_version"] == 1
    assert by_index[1]["status"] == "rejected"
    assert by_index[1]["error"] == "this connector is locally managed"
    assert by_index[1]["applied_version"] == -1
    assert by_index[2]["status"] == "failed"
    assert "closed" in by_index[2]["error"]
    messages = [m["message"] for m in answer["messages"]]
    assert len(messages) == 2
    assert any("rejected version 1: this connector is locally managed" in m for m in messages)
    assert draining.seen == []
    # GET tells the same, per live connection.
    shown = env.call("GET")[1]
    assert {p["status"] for p in shown["result"]["pushes"]} == {"applied", "rejected", "failed"}
    assert len(shown["messages"]) == 2


def test_a_version_stored_elsewhere_is_pushed_once_to_connections_that_lack_it(env: Env) -> None:
    from adit.edge.config_sync import push_newer

    behind = Connector()
    env.connect(behind, 0)
    env.call("PUT", {"config": CONFIG})  # pushed by the PUT itself
    assert behind.seen == [1]
    late = Connector()
    env.connect(late, 1)  # e.g. listed while another process stored version 2
    env.store.configs.put(env.account, env.tunnel, json.dumps(CONFIG))
    assert env.store.configs.counter() == 2

    async def sweep() -> tuple[int, int]:
        first = push_newer(env.store, env.registry)
        second = push_newer(env.store, env.registry)  # in flight: not queued again
        for _ in range(100):
            if behind.runs == late.runs == 2:
                break
            await asyncio.sleep(0.01)
        return first, second

    assert asyncio.run(sweep()) == (2, 0)
    assert (behind.seen, late.seen) == ([1, 2], [2])
