"""The browser flow's sans-IO parts with time injected: PIN book, flow table, ID token
validation, return paths, CSRF tokens and the pages' escaping."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adit.edge.access.login_page import (
    ProviderChoice,
    cookie_header,
    csrf_token,
    csrf_valid,
    denied_page,
    login_page,
    safe_return_path,
)
from adit.edge.access.oidc_client import (
    FlowRefused,
    FlowTable,
    IdTokenRejected,
    OidcSettings,
    ProviderMetadata,
    ProviderUnavailable,
    authorization_url,
    identity_from_claims,
    parse_metadata,
    validate_id_token,
)
from adit.edge.access.pin import (
    MAX_ATTEMPTS,
    PIN_LIFETIME,
    PinBook,
    PinLocked,
    PinMailer,
    PinResult,
    SmtpSettings,
)
from ports import free_port

# --- one-time PIN -------------------------------------------------------------------------


def test_pin_is_six_digits_and_accepted_once() -> None:
    book = PinBook()
    pin = book.issue("Alice@Example.com", now=0)
    assert len(pin) == 6 and pin.isdigit()
    assert book.check("alice@example.com", pin, now=1) is PinResult.ACCEPTED
    assert book.check("alice@example.com", pin, now=2) is PinResult.UNKNOWN


def test_pin_expires() -> None:
    book = PinBook()
    pin = book.issue("a@example.com", now=100)
    assert book.check("a@example.com", pin, now=100 + PIN_LIFETIME) is PinResult.EXPIRED
    assert book.check("a@example.com", pin, now=100 + PIN_LIFETIME + 1) is PinResult.UNKNOWN


def test_pin_locks_after_five_wrong_even_for_the_right_one_and_a_new_pin() -> None:
    book = PinBook()
    pin = book.issue("a@example.com", now=0)
    wrong = f"{(int(pin) + 1) % 1_000_000:06d}"
    results = [book.check("a@example.com", wrong, now=1) for _ in range(MAX_ATTEMPTS)]
    assert results == [PinResult.WRONG] * (MAX_ATTEMPTS - 1) + [PinResult.LOCKED]
    assert book.check("a@example.com", pin, now=2) is PinResult.LOCKED
    with pytest.raises(PinLocked):
        book.issue("a@example.com", now=3)
    # The lock ends with the PIN's lifetime.
    assert book.issue("a@example.com", now=PIN_LIFETIME + 1)


def test_reissued_pin_keeps_the_failures_and_issues_are_bounded() -> None:
    book = PinBook()
    book.issue("a@example.com", now=0)
    for _ in range(MAX_ATTEMPTS - 1):
        assert book.check("a@example.com", "x", now=1) is PinResult.WRONG
    book.issue("a@example.com", now=2)
    assert book.check("a@example.com", "y", now=3) is PinResult.LOCKED
    other = PinBook()
    for _ in range(5):
        other.issue("b@example.com", now=0)
    with pytest.raises(PinLocked):
        other.issue("b@example.com", now=0)


def test_pin_is_stored_hashed() -> None:
    book = PinBook()
    pin = book.issue("a@example.com", now=0)
    stored = repr(book.__dict__) + repr(vars(book._challenges["a@example.com"]))
    assert pin not in stored and pin.encode() not in book._challenges["a@example.com"].digest


def test_mail_failure_names_the_server_not_the_pin() -> None:
    port = free_port()  # nothing listens there
    mailer = PinMailer(SmtpSettings(host="127.0.0.1", port=port, sender="a@b.test", timeout=5))
    with pytest.raises(OSError, match=f"SMTP 127.0.0.1:{port}") as caught:
        asyncio.run(mailer.send("a@example.com", "493817", "App"))
    assert "493817" not in str(caught.value)


# --- return paths, CSRF, pages -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/app/x?y=1#z", "/app/x?y=1#z"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("http:/evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/a\r\nSet-Cookie: x=1", "/"),
        ("/a\tb", "/"),
        ("evil.example/x", "/"),
        ("/" + "a" * 3000, "/"),
    ],
)
def test_return_path_stays_on_this_host(value: str | None, expected: str) -> None:
    assert safe_return_path(value) == expected


def test_csrf_token_is_bound_to_the_browser_cookie() -> None:
    key = b"k" * 32
    token = csrf_token(key, "cookie-a")
    assert csrf_valid(key, "cookie-a", token)
    assert not csrf_valid(key, "cookie-b", token)
    assert not csrf_valid(key, None, token)
    assert not csrf_valid(key, "cookie-a", None)
    assert not csrf_valid(b"x" * 32, "cookie-a", token)


def test_pages_escape_what_they_show() -> None:
    name = '<script>alert("x")</script>'
    page = login_page(
        name,
        [ProviderChoice('p"1', "<b>IdP</b>", "oidc")],
        return_to='/x"><script>',
        csrf="t",
        error="<img>",
    ).decode()
    assert "<script>" not in page and "<b>IdP</b>" not in page and "<img>" not in page
    assert "&lt;script&gt;" in page
    # An off-host return path is not even carried in the form.
    assert 'name="return_to" value="/x&quot;&gt;&lt;script&gt;"' in page
    denied = denied_page(name, email="<e>@x", ray_id="<r>").decode()
    assert "<script>" not in denied and "<e>" not in denied and "<r>" not in denied


def test_cookie_is_httponly_lax_and_secure() -> None:
    assert cookie_header("CF_Authorization", "v", max_age=60) == (
        "CF_Authorization=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
    )


# --- OIDC: flows and ID tokens -------------------------------------------------------------

ISSUER = "https://idp.example.test"
SETTINGS = OidcSettings(discovery_url=ISSUER, client_id="client-1", client_secret="s")
METADATA = ProviderMetadata(
    issuer=ISSUER,
    authorization_endpoint=ISSUER + "/auth",
    token_endpoint=ISSUER + "/token",
    jwks_uri=ISSUER + "/jwks",
    algorithms=frozenset({"RS256"}),
)
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
JWKS = jwt.PyJWKSet.from_dict(
    {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "k1"}]}
)


def id_token(key: Any = KEY, alg: str = "RS256", kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": "client-1",
        "sub": "u1",
        "iat": now,
        "exp": now + 300,
        "nonce": "n-1",
        "email": "Alice@Example.com",
        "groups": ["eng"],
        **claims,
    }
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def check(token: str, nonce: str = "n-1") -> dict[str, Any]:
    return validate_id_token(token, JWKS, METADATA, SETTINGS, nonce, time.time())


def test_valid_id_token_maps_to_email_and_groups() -> None:
    identity = identity_from_claims(check(id_token()), SETTINGS)
    assert (identity.email, identity.groups, identity.subject) == (
        "alice@example.com",
        ("eng",),
        "u1",
    )


def test_claim_names_are_configurable() -> None:
    settings = OidcSettings(
        discovery_url=ISSUER,
        client_id="c",
        client_secret="s",
        email_claim="upn",
        groups_claim="roles",
    )
    identity = identity_from_claims({"upn": "b@x.test", "roles": "admin", "sub": "2"}, settings)
    assert (identity.email, identity.groups) == ("b@x.test", ("admin",))
    with pytest.raises(IdTokenRejected, match="no e-mail"):
        identity_from_claims({"sub": "2"}, settings)


# The tokens are made when each test runs, not at collection: a suite longer than their
# five minutes of life would find them all expired.
@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"nonce": "other"}, "nonce"),
        ({"aud": "another-client"}, "Audience"),
        ({"iss": "https://evil.example.test"}, "issuer"),
        ({"exp": -3600}, "expired"),
        ({"kid": "unknown"}, "not in the provider's JWKS"),
        ({"key": "another"}, "Signature"),
        ({"key": None, "alg": "none"}, "'none'"),
    ],
)
def test_bad_id_tokens_are_refused(claims: dict[str, Any], why: str) -> None:
    claims = dict(claims)
    if claims.get("exp") is not None:
        claims["exp"] += int(time.time())
    if claims.get("key") == "another":
        claims["key"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(IdTokenRejected, match=why):
        check(id_token(**claims))


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # PyJWT itself refuses a PEM key as an HMAC secret; build the token by hand, as an attacker.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    payload = b64(json.dumps(jwt.decode(id_token(), options={"verify_signature": False})).encode())
    signature = hmac.new(PUBLIC_PEM, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(IdTokenRejected, match="HS256"):
        check(f"{header}.{payload}.{b64(signature)}")


def test_flow_is_taken_once_with_its_own_state_before_it_expires() -> None:
    table = FlowTable(lifetime=600)
    flow_id, flow = table.begin("https://app.example.test/cb", "/x", now=0)
    with pytest.raises(FlowRefused, match="state"):
        table.take(flow_id, "forged", now=1)
    # The forged attempt used the flow up: the real callback is refused too.
    with pytest.raises(FlowRefused, match="no login"):
        table.take(flow_id, flow.state, now=2)
    flow_id, flow = table.begin("https://app.example.test/cb", "/x", now=0)
    assert table.take(flow_id, flow.state, now=5) == flow
    with pytest.raises(FlowRefused, match="no login"):
        table.take(flow_id, flow.state, now=6)
    flow_id, flow = table.begin("https://app.example.test/cb", "/x", now=0)
    with pytest.raises(FlowRefused, match="too long"):
        table.take(flow_id, flow.state, now=600)
    with pytest.raises(FlowRefused):
        table.take(None, flow.state, now=1)


def test_flow_table_is_bounded() -> None:
    table = FlowTable(limit=3)
    ids = [table.begin("https://a/cb", "/", now=0)[0] for _ in range(5)]
    assert len(table) == 3
    with pytest.raises(FlowRefused):
        table.take(ids[0], "s", now=1)


def test_authorization_url_has_pkce_state_and_nonce() -> None:
    _, flow = FlowTable().begin("https://app.example.test/cb", "/", now=0)
    url = authorization_url(METADATA, SETTINGS, flow)
    assert url.startswith(ISSUER + "/auth?response_type=code&client_id=client-1")
    for part in ("code_challenge_method=S256", f"state={flow.state}", f"nonce={flow.nonce}"):
        assert part in url
    assert flow.code_verifier not in url and len(flow.code_verifier) >= 43


def test_discovery_must_name_its_own_issuer_and_a_safe_algorithm() -> None:
    doc = {
        "issuer": ISSUER,
        "authorization_endpoint": ISSUER + "/auth",
        "token_endpoint": ISSUER + "/token",
        "jwks_uri": ISSUER + "/jwks",
        "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
    }
    assert parse_metadata(doc, SETTINGS).algorithms == frozenset({"RS256"})
    with pytest.raises(ProviderUnavailable, match="names issuer"):
        parse_metadata({**doc, "issuer": "https://evil.example.test"}, SETTINGS)
    with pytest.raises(ProviderUnavailable, match="no safe algorithm"):
        parse_metadata({**doc, "id_token_signing_alg_values_supported": ["HS256"]}, SETTINGS)
    with pytest.raises(ProviderUnavailable, match="token_endpoint"):
        parse_metadata({k: v for k, v in doc.items() if k != "token_endpoint"}, SETTINGS)
