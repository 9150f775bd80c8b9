"""The Access gate with a real (in-memory) store: session tokens (the CF_Authorization cookie
and the cf-access-token header) and service tokens, the way the public listener asks."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from adit.edge.access.decisions import DecisionLog, query
from adit.edge.access.gate import ASSERTION, USER_EMAIL, AccessGate, Admitted
from adit.edge.access.jwt_keys import key_set, new_signing_key
from adit.edge.access.model import Application
from adit.edge.pages import ErrorPage
from adit.edge.store import Store

HOST = "app.example.test"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Iterator[Store]:
    opened = Store(":memory:")
    yield opened
    opened.close()


@pytest.fixture
def account(store: Store) -> str:
    tag = store.create_account("acme").tag
    store.add_zone(tag, "example.test")
    return tag


def setup_app(store: Store, account: str, domain: str = HOST) -> Application:
    app = store.access.create_app(account, {"name": "Wiki", "domain": domain})
    store.access.create_policy(
        account,
        app.id,
        {
            "name": "staff",
            "decision": "allow",
            "include": [{"email_domain": {"domain": "example.com"}}],
            "require": [{"geo": {"country_code": "DE"}}],
        },
    )
    return app


def cookie(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", b"theme=dark; CF_Authorization=" + token.encode() + b"; x=1")]


def test_a_session_is_verified_checked_against_policies_and_forwarded(
    store: Store, account: str
) -> None:
    app = setup_app(store, account)
    clock = Clock()
    log = DecisionLog(store.access.db)
    gate = AccessGate(store.access, log, clock=clock)
    ann = gate.mint_session(app, email="ann@example.com", sub="ann", country="DE")
    verdict = gate.check(HOST, "/", cookie(ann), "192.0.2.1", "ray-1")
    assert isinstance(verdict, Admitted)
    assert dict(verdict.headers) == {ASSERTION: ann, USER_EMAIL: "ann@example.com"}
    # The header form is the same session.
    assert isinstance(
        gate.check(HOST, "/", [(b"cf-access-token", ann.encode())], "", "r"), Admitted
    )
    # The mission's policy: a US visitor of example.com, a DE visitor of another domain: 403.
    us = gate.mint_session(app, email="bob@example.com", sub="bob", country="US")
    other = gate.mint_session(app, email="eve@other.org", sub="eve", country="DE")
    for token in (us, other):
        denied = gate.check(HOST, "/", cookie(token), "192.0.2.1", "ray-2")
        assert isinstance(denied, ErrorPage) and denied.status == 403
        page = denied.render(HOST, "ray-2").decode()
        assert "Wiki" in page and "staff" not in page  # the app named, no policy internals
    # Expired: a login again.
    clock.now += 25 * 3600
    expired = gate.check(HOST, "/", cookie(ann), "192.0.2.1", "ray-3")
    assert isinstance(expired, ErrorPage) and expired.status == 401
    log.write_now()
    entries, total = query(store.access.db, account)
    assert total == 4  # later requests of ann's session are not logged again
    assert {e.action for e in entries} == {"allow", "deny", "login"}


def test_forged_and_foreign_tokens_are_refused(store: Store, account: str) -> None:
    app = setup_app(store, account)
    second = setup_app(store, account, "second.example.test")
    gate = AccessGate(store.access, DecisionLog(store.access.db))
    good = gate.mint_session(app, email="ann@example.com", sub="ann", country="DE")
    claims: dict[str, Any] = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    public = key_set(store.access.table().keys[account])["public_cert"]["cert"].encode()
    stranger = new_signing_key()
    stranger_pem = stranger.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forgeries = {
        "none": jwt.encode(claims, "", algorithm="none", headers={"kid": kid}),
        "hs256 with the public key": _hs256(claims, kid, public),
        "expired": store.access.table()
        .keys[account][0]
        .sign({**claims, "exp": int(claims["iat"]) - 10}),
        "another key": jwt.encode(claims, stranger_pem, algorithm="RS256", headers={"kid": kid}),
        "another issuer": store.access.table()
        .keys[account][0]
        .sign({**claims, "iss": "https://evil.example"}),
    }
    for why, token in forgeries.items():
        verdict = gate.check(HOST, "/", cookie(token), "", "r")
        assert isinstance(verdict, ErrorPage) and verdict.status == 401, why
    # One application's session is none for another (its aud).
    verdict = gate.check("second.example.test", "/", cookie(good), "", "r")
    assert isinstance(verdict, ErrorPage) and verdict.status == 401
    assert isinstance(
        gate.check(
            "second.example.test",
            "/",
            cookie(gate.mint_session(second, email="ann@example.com", sub="a", country="DE")),
            "",
            "r",
        ),
        Admitted,
    )


def _hs256(claims: dict[str, Any], kid: str, key: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = part(json.dumps(claims).encode())
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(mac)}"


def test_keys_rotate_with_overlap(store: Store, account: str) -> None:
    app = setup_app(store, account)
    gate = AccessGate(store.access, DecisionLog(store.access.db))
    before = gate.mint_session(app, email="ann@example.com", sub="ann", country="DE")
    old_kid = jwt.get_unverified_header(before)["kid"]
    store.access.rotate_keys(account)
    kids = [k["kid"] for k in key_set(store.access.table().keys[account])["keys"]]
    assert len(kids) == 2 and kids[1] == old_kid  # the new key first, the old one still there
    after = gate.mint_session(app, email="ann@example.com", sub="ann", country="DE")
    assert jwt.get_unverified_header(after)["kid"] == kids[0]
    fresh_gate = AccessGate(store.access, DecisionLog(store.access.db))
    for token in (before, after):
        assert isinstance(fresh_gate.check(HOST, "/", cookie(token), "", "r"), Admitted)


def test_paths_and_unguarded_hosts(store: Store, account: str) -> None:
    app = store.access.create_app(account, {"name": "Admin", "domain": f"{HOST}/admin"})
    assert (app.domain, app.path) == (HOST, "/admin")
    gate = AccessGate(store.access, DecisionLog(store.access.db))
    assert gate.check(HOST, "/", [], "", "r") is None
    assert gate.check(HOST, "/administrator", [], "", "r") is None
    assert isinstance(gate.check(HOST, "/admin/x", [], "", "r"), ErrorPage)
    assert isinstance(gate.check(HOST, "/admin?x", [], "", "r"), ErrorPage)
    assert gate.check("elsewhere.example.test", "/admin", [], "", "r") is None


def test_garbage_is_refused_and_a_failure_to_decide_fails_closed(
    store: Store, account: str
) -> None:
    app = setup_app(store, account)
    gate = AccessGate(store.access, DecisionLog(store.access.db))
    for junk in (b"x" * 10_000, b"a.b.c", b"\xff\xfe", b"=;=;CF_Authorization"):
        verdict = gate.check(HOST, "/", [(b"cookie", b"CF_Authorization=" + junk)], "", "r")
        assert isinstance(verdict, ErrorPage) and verdict.status == 401
    ids = [(b"cf-access-client-id", b"\xff.access"), (b"cf-access-client-secret", b"")]
    verdict = gate.check(HOST, "/", ids, "", "r")
    assert isinstance(verdict, ErrorPage) and verdict.status == 401
    # A token of ours whose claims the policies cannot read (a number for a country): the
    # request is refused, the gate does not raise.
    odd = (
        store.access.table()
        .keys[account][0]
        .sign(
            {
                **jwt.decode(
                    gate.mint_session(app, email="a@example.com", sub="a"),
                    options={"verify_signature": False},
                ),
                "country": 49,
            }
        )
    )
    verdict = gate.check(HOST, "/", cookie(odd), "", "r")
    assert isinstance(verdict, ErrorPage) and verdict.status in (403, 500)


def test_keys_rotate_by_themselves_at_the_interval(store: Store, account: str) -> None:
    import asyncio

    app = setup_app(store, account)
    token = store.access.create_service_token(account, {"name": "ci"})
    store.access.create_policy(
        account,
        app.id,
        {
            "name": "ci",
            "decision": "non_identity",
            "include": [{"any_valid_service_token": {}}],
            "precedence": 0,
        },
    )
    settings = store.access.set_key_rotation(account, 21)
    assert settings["key_rotation_interval_days"] == 21
    assert settings["days_until_next_rotation"] in (20, 21)
    clock = Clock()
    gate = AccessGate(store.access, DecisionLog(store.access.db), clock=clock)
    headers = [
        (b"cf-access-client-id", token.token.client_id.encode()),
        (b"cf-access-client-secret", token.client_secret.encode()),
    ]
    (first,) = store.access.table().keys[account]

    async def requests() -> None:
        assert isinstance(gate.check(HOST, "/", headers, "", "r1"), Admitted)
        clock.now += 22 * 86400
        for _ in range(100):  # the rotation runs on the store's writer thread
            verdict = gate.check(HOST, "/", headers, "", "r2")
            assert isinstance(verdict, Admitted)  # the old key signs meanwhile
            if len(store.access.table().keys[account]) == 2:
                break
            await asyncio.sleep(0.05)

    asyncio.run(requests())
    keys = store.access.table().keys[account]
    assert [k.kid for k in keys][1:] == [first.kid] and not keys[0].retired
    with pytest.raises(Exception, match="21 to 365"):
        store.access.set_key_rotation(account, 7)


def test_with_a_country_database_the_request_address_decides(store: Store, account: str) -> None:
    """The token says where the visitor logged in; with ``--geoip-db`` every request is
    judged by where it comes from now, and an address the database does not know has no
    country (a geo rule does not match it)."""
    app = setup_app(store, account)
    countries = {"192.0.2.1": "DE", "192.0.2.2": "US"}
    gate = AccessGate(store.access, DecisionLog(store.access.db), country_of=countries.get)
    ann = gate.mint_session(app, email="ann@example.com", sub="ann", country="DE")
    assert isinstance(gate.check(HOST, "/", cookie(ann), "192.0.2.1", "r1"), Admitted)
    for elsewhere in ("192.0.2.2", "198.51.100.9"):
        refused = gate.check(HOST, "/", cookie(ann), elsewhere, "r2")
        assert isinstance(refused, ErrorPage) and refused.status == 403
