"""ManagementApi's /access endpoints: Cloudflare's shapes, refusals that say the fix, secrets
never answered, and account isolation."""

from __future__ import annotations

import asyncio
import json
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
    account: str
    token: str
    other: str
    other_token: str

    def call(
        self, method: str, rest: str, body: object = None, *, other: bool = False
    ) -> tuple[int, Any]:
        account, token = (self.other, self.other_token) if other else (self.account, self.token)
        headers = [(b"authorization", f"Bearer {token}".encode())]
        raw = b"" if body is None else json.dumps(body).encode()
        path = f"/client/v4/accounts/{account}/access/{rest}"
        status, _, payload = asyncio.run(self.api.handle(method, path, headers, raw))
        return status, json.loads(payload)

    def ok(self, method: str, rest: str, body: object = None) -> Any:
        status, reply = self.call(method, rest, body)
        assert status == 200 and reply["success"] is True, reply
        return reply["result"]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = Store.open_in(tmp_path)
    api = ManagementApi(store, ConnectionRegistry(), EdgeInfo(("127.0.0.1:7844",), "pem"))
    a, b = store.create_account("a").tag, store.create_account("b").tag
    store.add_zone(a, "example.test")
    store.add_zone(b, "other.test")
    yield Env(api, a, store.create_api_token(a).token, b, store.create_api_token(b).token)
    store.close()


def message(reply: Any) -> str:
    [only] = reply["errors"]
    return str(only["message"])


def test_apps_and_policies_crud_in_cloudflares_shapes(env: Env) -> None:
    app = env.ok("POST", "apps", {"name": "Wiki", "domain": "Wiki.Example.test/docs/"})
    assert app["domain"] == "wiki.example.test/docs" and app["type"] == "self_hosted"
    assert app["session_duration"] == "24h"
    policy = env.ok(
        "POST",
        f"apps/{app['id']}/policies",
        {"name": "staff", "decision": "allow", "include": [{"email": {"email": "A@Example.com"}}]},
    )
    assert policy["include"] == [{"email": {"email": "a@example.com"}}]
    assert policy["precedence"] == 1
    changed = env.ok(
        "PUT", f"apps/{app['id']}/policies/{policy['id']}", {"decision": "deny", "precedence": 4}
    )
    assert (changed["decision"], changed["precedence"], changed["name"]) == ("deny", 4, "staff")
    listed = env.ok("GET", "apps")
    assert [a["id"] for a in listed] == [app["id"]]
    env.ok("DELETE", f"apps/{app['id']}")
    assert env.call("GET", f"apps/{app['id']}/policies")[0] == 404


@pytest.mark.parametrize(
    ("rest", "body", "fix"),
    [
        ("apps", {"name": "x", "domain": "nowhere.invalid"}, "adit edge zone add"),
        ("apps", {"name": "x", "domain": "a.example.test", "session_duration": "soon"}, "24h"),
        ("apps", {"name": "x", "domain": "a.example.test", "colour": "red"}, "unknown field"),
        ("identity_providers", {"name": "x", "type": "saml"}, "oidc or onetimepin"),
        (
            "identity_providers",
            {
                "name": "x",
                "type": "oidc",
                "config": {"discovery_url": "http://a", "client_id": "c"},
            },
            "https://",
        ),
        ("service_tokens", {"name": "x", "duration": "forever"}, "24h"),
        ("organizations", {"auth_domain": "not a name"}, "auth_domain"),
    ],
)
def test_refusals_say_what_to_do(env: Env, rest: str, body: object, fix: str) -> None:
    status, reply = env.call("PUT" if rest == "organizations" else "POST", rest, body)
    assert status == 400 and fix in message(reply), reply


def test_a_hostname_has_one_application(env: Env) -> None:
    env.ok("POST", "apps", {"name": "one", "domain": "a.example.test"})
    status, reply = env.call("POST", "apps", {"name": "two", "domain": "a.example.test"})
    assert status == 409 and "already guards" in message(reply)


def test_secrets_are_never_answered(env: Env) -> None:
    config = {
        "discovery_url": "https://idp.example.test/.well-known/openid-configuration",
        "client_id": "wiki",
        "client_secret": "hunter2-hunter2",
    }
    idp = env.ok("POST", "identity_providers", {"name": "corp", "type": "oidc", "config": config})
    pin = env.ok(
        "POST",
        "identity_providers",
        {
            "name": "pin",
            "type": "onetimepin",
            "config": {"smtp_host": "mail.test", "smtp_from": "a@b.test", "smtp_password": "pw!"},
        },
    )
    token = env.ok("POST", "service_tokens", {"name": "ci"})
    everything = json.dumps(
        [
            env.ok("GET", "identity_providers"),
            env.ok("GET", f"identity_providers/{idp['id']}"),
            env.ok("GET", f"identity_providers/{pin['id']}"),
            env.ok("GET", "service_tokens"),
            env.ok("GET", "export"),
        ]
    )
    assert "hunter2" not in everything and "pw!" not in everything
    assert token["client_secret"] not in everything
    assert idp["config"]["client_secret"] == "*****"


def test_another_account_sees_and_touches_nothing(env: Env) -> None:
    app = env.ok("POST", "apps", {"name": "Wiki", "domain": "wiki.example.test"})
    token = env.ok("POST", "service_tokens", {"name": "ci"})
    for method, rest in (
        ("GET", f"apps/{app['id']}"),
        ("DELETE", f"apps/{app['id']}"),
        ("GET", f"apps/{app['id']}/policies"),
        ("POST", f"service_tokens/{token['id']}/rotate"),
        ("DELETE", f"service_tokens/{token['id']}"),
    ):
        assert env.call(method, rest, other=True)[0] == 404, (method, rest)
    # A domain in another account's zone cannot be claimed.
    status, _ = env.call("POST", "apps", {"name": "x", "domain": "wiki.example.test"}, other=True)
    assert status == 400
    # And the path's account must be the token's.
    headers = [(b"authorization", f"Bearer {env.other_token}".encode())]
    status, _, _ = asyncio.run(
        env.api.handle("GET", f"/client/v4/accounts/{env.account}/access/apps", headers, b"")
    )
    assert status in (403, 404)


def test_a_team_domain_is_no_other_accounts_name(env: Env) -> None:
    # In another account's zone: refused; outside every zone (e.g. localhost:8443): fine.
    status, reply = env.call("PUT", "organizations", {"auth_domain": "team.other.test"})
    assert status == 409 and "another account's zone" in message(reply)
    assert env.ok("PUT", "organizations", {"auth_domain": "localhost:8443"}) == {
        "auth_domain": "localhost:8443"
    }
    status, reply = env.call("PUT", "organizations", {"auth_domain": "localhost:9443"}, other=True)
    assert status == 409 and "another account's" in message(reply)
    assert env.ok("PUT", "organizations", {"auth_domain": "team.example.test"}) == {
        "auth_domain": "team.example.test"
    }
