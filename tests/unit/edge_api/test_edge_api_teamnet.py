"""ManagementApi's /teamnet endpoints: Cloudflare's shapes, codes, and account isolation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adit.edge.api import EdgeInfo, ManagementApi
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store


@dataclass
class Env:
    api: ManagementApi
    store: Store
    account: str
    token: str
    other: str
    other_token: str

    def call(
        self, method: str, path: str, body: object = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        headers = [(b"authorization", f"Bearer {token or self.token}".encode())]
        raw = b"" if body is None else json.dumps(body).encode()
        status, _, payload = asyncio.run(self.api.handle(method, path, headers, raw))
        return status, json.loads(payload)

    def ok(self, method: str, path: str, body: object = None) -> Any:
        status, reply = self.call(method, path, body)
        assert status == 200, reply
        assert reply["success"] is True
        return reply["result"]

    def teamnet(self, rest: str, account: str | None = None) -> str:
        return f"/client/v4/accounts/{account or self.account}/teamnet/{rest}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = Store.open_in(tmp_path)
    api = ManagementApi(store, ConnectionRegistry(), EdgeInfo(("127.0.0.1:7844",), "pem"))
    a, b = store.create_account("a").tag, store.create_account("b").tag
    yield Env(api, store, a, store.create_api_token(a).token, b, store.create_api_token(b).token)
    store.close()


def error(reply: Any) -> tuple[int, str]:
    [only] = reply["errors"]
    return only["code"], only["message"]


def tunnel(env: Env, name: str = "web", account: str | None = None) -> str:
    return str(env.store.create_tunnel(account or env.account, name).id)


def test_create_list_get_and_delete_a_route(env: Env) -> None:
    tid = tunnel(env)
    created = env.ok(
        "POST",
        env.teamnet("routes"),
        {"network": "10.1.0.0/16", "tunnel_id": tid, "comment": "office"},
    )
    assert set(created) == {
        "id",
        "network",
        "tunnel_id",
        "virtual_network_id",
        "comment",
        "created_at",
        "deleted_at",
    }
    assert (created["network"], created["tunnel_id"], created["comment"]) == (
        "10.1.0.0/16",
        tid,
        "office",
    )
    assert created["created_at"].endswith("Z") and created["deleted_at"] is None
    [vnet] = env.ok("GET", env.teamnet("virtual_networks"))
    assert created["virtual_network_id"] == vnet["id"] and vnet["is_default_network"] is True

    listed = env.ok("GET", env.teamnet("routes?is_deleted=false&tun_types=cfd_tunnel"))
    assert [r["id"] for r in listed] == [created["id"]]
    assert listed[0]["tunnel_name"] == "web"
    assert listed[0]["virtual_network_name"] == "default"
    assert env.ok("GET", env.teamnet("routes?tun_types=warp_connector")) == []
    assert env.ok("GET", env.teamnet(f"routes/{created['id']}"))["network"] == "10.1.0.0/16"

    deleted = env.ok("DELETE", env.teamnet(f"routes/{created['id']}"))
    assert deleted["deleted_at"] is not None
    status, reply = env.call("DELETE", env.teamnet(f"routes/{created['id']}"))
    assert status == 404
    assert error(reply) == (
        1015,
        "You are trying to modify the route for a network that isn't routed. Please add the "
        "network before modifying it. Or, check that you specified the correct network.",
    )
    assert env.ok("GET", env.teamnet("routes?is_deleted=false")) == []
    assert len(env.ok("GET", env.teamnet("routes?is_deleted=true"))) == 1


def test_get_by_ip_is_the_longest_prefix_or_null(env: Env) -> None:
    wide, narrow = tunnel(env, "wide"), tunnel(env, "narrow")
    env.ok("POST", env.teamnet("routes"), {"network": "10.0.0.0/8", "tunnel_id": wide})
    env.ok("POST", env.teamnet("routes"), {"network": "10.1.0.0/16", "tunnel_id": narrow})
    env.ok("POST", env.teamnet("routes"), {"network": "2001:db8::/32", "tunnel_id": narrow})
    assert env.ok("GET", env.teamnet("routes/ip/10.1.2.3"))["tunnel_name"] == "narrow"
    assert env.ok("GET", env.teamnet("routes/ip/10.2.2.3"))["tunnel_name"] == "wide"
    assert env.ok("GET", env.teamnet("routes/ip/2001:db8::9"))["network"] == "2001:db8::/32"
    assert env.ok("GET", env.teamnet("routes/ip/192.0.2.1")) is None
    status, reply = env.call("GET", env.teamnet("routes/ip/10.1.2"))
    assert (status, error(reply)) == (400, (1001, "10.1.2 is not a valid IP address"))
    status, reply = env.call(
        "GET", env.teamnet(f"routes/ip/10.1.2.3?virtual_network_id={uuid.uuid4()}")
    )
    assert status == 404


def test_refusals_carry_cloudflares_codes_and_the_fix(env: Env) -> None:
    tid = tunnel(env)
    env.ok("POST", env.teamnet("routes"), {"network": "10.0.0.0/8", "tunnel_id": tid})
    status, reply = env.call(
        "POST", env.teamnet("routes"), {"network": "10.0.0.0/8", "tunnel_id": tid}
    )
    assert status == 409
    code, message = error(reply)
    assert code == 1014
    assert message.startswith("You already have a route defined for this exact IP subnet")
    status, reply = env.call(
        "POST", env.teamnet("routes"), {"network": "10.1.2.3/16", "tunnel_id": tid}
    )
    assert (status, error(reply)[1]) == (
        400,
        "10.1.2.3/16 has host bits set: use 10.1.0.0/16 for the whole network, or "
        "10.1.2.3/32 for the one address",
    )
    status, reply = env.call(
        "POST", env.teamnet("routes"), {"network": "10.9.0.0/16", "tunnel_id": str(uuid.uuid4())}
    )
    assert status == 404
    for body in ({"tunnel_id": tid}, {"network": 10, "tunnel_id": tid}, {"network": "1/8"}):
        status, reply = env.call("POST", env.teamnet("routes"), body)
        assert status == 400, reply
    status, reply = env.call("PUT", env.teamnet("routes"))
    assert status == 405


def test_a_tunnel_with_routes_is_deleted_only_with_cascade(env: Env) -> None:
    tid = tunnel(env)
    env.ok("POST", env.teamnet("routes"), {"network": "10.0.0.0/8", "tunnel_id": tid})
    path = f"/accounts/{env.account}/cfd_tunnel/{tid}"
    status, reply = env.call("DELETE", path)
    assert status == 400
    code, message = error(reply)
    assert code == 1023
    assert message.startswith("Cannot delete tunnel because it has IP routes (10.0.0.0/8)")
    env.ok("DELETE", path + "?cascade=true")
    assert env.ok("GET", env.teamnet("routes?is_deleted=false")) == []
    assert env.ok("GET", env.teamnet("routes/ip/10.0.0.1")) is None


def test_the_older_calls_by_network(env: Env) -> None:
    tid = tunnel(env)
    created = env.ok("POST", env.teamnet("routes/network/10.0.0.0%2F8"), {"tunnel_id": tid})
    assert created["network"] == "10.0.0.0/8"
    status, _ = env.call("DELETE", env.teamnet("routes/network/10.1.0.0%2F16"))
    assert status == 404
    deleted = env.ok("DELETE", env.teamnet("routes/network/10.0.0.0/8"))  # unencoded too
    assert deleted["id"] == created["id"]


def test_virtual_networks(env: Env) -> None:
    tid = tunnel(env)
    [default] = env.ok("GET", env.teamnet("virtual_networks"))  # made on first sight
    assert default["name"] == "default"
    lab = env.ok(
        "POST",
        env.teamnet("virtual_networks"),
        {"name": "lab", "comment": "the lab", "is_default_network": True},
    )
    assert set(lab) == {"id", "comment", "name", "is_default_network", "created_at", "deleted_at"}
    defaults = env.ok("GET", env.teamnet("virtual_networks?is_default=true"))
    assert [v["name"] for v in defaults] == ["lab"]
    status, reply = env.call("POST", env.teamnet("virtual_networks"), {"name": "lab"})
    assert status == 409

    env.ok(
        "POST",
        env.teamnet("routes"),
        {"network": "10.0.0.0/8", "tunnel_id": tid, "virtual_network_id": lab["id"]},
    )
    status, reply = env.call("DELETE", env.teamnet(f"virtual_networks/{lab['id']}"))
    assert status == 400
    assert "it is the account's default virtual network" in error(reply)[1]
    status, reply = env.call(
        "PATCH", env.teamnet(f"virtual_networks/{lab['id']}"), {"is_default_network": False}
    )
    assert status == 400
    env.ok("PATCH", env.teamnet(f"virtual_networks/{default['id']}"), {"is_default": True})
    status, reply = env.call("DELETE", env.teamnet(f"virtual_networks/{lab['id']}"))
    assert status == 400
    assert "IP routes use it (10.0.0.0/8)" in error(reply)[1]
    renamed = env.ok("PATCH", env.teamnet(f"virtual_networks/{lab['id']}"), {"name": "lab2"})
    assert renamed["name"] == "lab2"
    deleted = env.ok("DELETE", env.teamnet(f"virtual_networks/{lab['id']}?force=true"))
    assert deleted["deleted_at"] is not None
    assert env.ok("GET", env.teamnet("routes?is_deleted=false")) == []
    live = env.ok("GET", env.teamnet("virtual_networks?is_deleted=false"))
    assert [v["name"] for v in live] == ["default"]
    assert env.ok("GET", env.teamnet(f"virtual_networks/{lab['id']}"))["name"] == "lab2"


def test_another_account_can_neither_see_nor_use_the_routes(env: Env) -> None:
    tid = tunnel(env)
    route = env.ok("POST", env.teamnet("routes"), {"network": "10.0.0.0/8", "tunnel_id": tid})
    vnet_id = route["virtual_network_id"]
    theirs = env.other_token
    # Naming my account in the path: refused before any lookup.
    for method, rest in (
        ("GET", "routes"),
        ("GET", "routes/ip/10.0.0.1"),
        ("GET", "virtual_networks"),
        ("DELETE", f"routes/{route['id']}"),
    ):
        status, reply = env.call(method, env.teamnet(rest), token=theirs)
        assert (status, error(reply)[0]) == (403, 10000)
    # In their own account my routes, tunnel and virtual network do not exist.
    mine = {"tunnel_id": tid, "network": "10.0.0.0/8"}
    path = env.teamnet("routes", env.other)
    status, _ = env.call("GET", path, token=theirs)
    assert status == 200
    assert env.call("GET", path, token=theirs)[1]["result"] == []
    assert env.call("POST", path, mine, token=theirs)[0] == 404
    own = str(env.store.create_tunnel(env.other, "own").id)
    status, _ = env.call(
        "POST",
        path,
        {"tunnel_id": own, "network": "10.0.0.0/8", "virtual_network_id": vnet_id},
        token=theirs,
    )
    assert status == 404
    for method, rest in (
        ("GET", f"routes/{route['id']}"),
        ("DELETE", f"routes/{route['id']}"),
        ("GET", f"routes/ip/10.0.0.1?virtual_network_id={vnet_id}"),
        ("DELETE", f"virtual_networks/{vnet_id}"),
    ):
        status, _ = env.call(method, env.teamnet(rest, env.other), token=theirs)
        assert status == 404, (method, rest)
    assert (
        env.call("GET", env.teamnet("routes/ip/10.0.0.1", env.other), token=theirs)[1]["result"]
        is None
    )
    assert env.ok("GET", env.teamnet("routes/ip/10.0.0.1"))["tunnel_id"] == tid
