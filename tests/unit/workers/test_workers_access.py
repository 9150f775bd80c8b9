"""The Access JWT check without a network: key sets come from a fetch function given in."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adit.config.origin import AccessSettings
from adit.workers.access import AccessDenied, AccessGate, KeySet, certs_url, issuer_of

ISSUER = "https://team.cloudflareaccess.com"
AUD = "aud-1"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


def _jwks(kid: str = "k1") -> bytes:
    public = jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    return json.dumps({"keys": [{**public, "kid": kid}, {"kty": "weird"}]}).encode()


def _token(kid: str = "k1", **claims: Any) -> str:
    base = {"iss": ISSUER, "aud": AUD, "exp": int(time.time()) + 86400}
    return jwt.encode({**base, **claims}, PEM, algorithm="RS256", headers={"kid": kid})


SETTINGS = AccessSettings(required=True, team_name="team", aud_tags=(AUD,))


class Fetches:
    def __init__(self, body: bytes | Exception) -> None:
        self.body = body
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if isinstance(self.body, Exception):
            raise self.body
        return self.body


def _check(gate: AccessGate, token: str, settings: AccessSettings = SETTINGS) -> None:
    asyncio.run(gate.check([("Cf-Access-Jwt-Assertion", token)], settings))


def test_issuers_and_certs_urls() -> None:
    assert issuer_of(SETTINGS) == ISSUER
    fed = AccessSettings(required=True, team_name="t", environment="fed")
    assert issuer_of(fed) == "https://t.fed.cloudflareaccess.com"
    own = AccessSettings(required=True, team_domain="https://access.example.test:8443")
    assert certs_url(issuer_of(own)) == "https://access.example.test:8443/cdn-cgi/access/certs"


def test_a_valid_token_passes_and_the_keys_are_fetched_once() -> None:
    fetches = Fetches(_jwks())
    gate = AccessGate(fetch=fetches)
    _check(gate, _token())
    _check(gate, _token(aud=["x", AUD]))
    assert fetches.urls == [f"{ISSUER}/cdn-cgi/access/certs"]


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (_token(aud="other"), "Invalid token in jwt"),
        (_token(exp=int(time.time()) - 5), "expired"),
        (_token(iss="https://evil"), "invalid token"),
        (_token(nbf=int(time.time()) + 7200), "not valid yet"),
        ("a.b", "malformed"),
    ],
)
def test_bad_tokens_are_denied(token: str, reason: str) -> None:
    with pytest.raises(AccessDenied, match=reason):
        _check(AccessGate(fetch=Fetches(_jwks())), token)


def test_a_missing_token_or_team_is_denied_without_a_fetch() -> None:
    fetches = Fetches(_jwks())
    gate = AccessGate(fetch=fetches)
    with pytest.raises(AccessDenied, match="no access token"):
        asyncio.run(gate.check([], SETTINGS))
    with pytest.raises(AccessDenied, match="without a teamName"):
        _check(gate, _token(), AccessSettings(required=True))
    assert fetches.urls == []


def test_keys_that_cannot_be_fetched_deny_and_are_refetched_boundedly() -> None:
    fetches = Fetches(OSError("connection refused"))
    gate = AccessGate(fetch=fetches)
    for _ in range(5):
        with pytest.raises(AccessDenied, match="no signing keys"):
            _check(gate, _token())
    assert len(fetches.urls) == 1  # within the refetch interval


def test_unknown_key_ids_refetch_at_most_once_per_interval() -> None:
    clock = [100.0]
    fetches = Fetches(_jwks("k1"))
    keys = KeySet("https://x/cdn-cgi/access/certs", fetch=fetches, clock=lambda: clock[0])

    async def run() -> None:
        assert [k.key_id for k in await keys.candidates("k1")] == ["k1"]
        assert await keys.candidates("nope") == []  # throttled: no second fetch yet
        clock[0] += 10
        fetches.body = _jwks("k2")
        assert [k.key_id for k in await keys.candidates("k2")] == ["k2"]
        # Many concurrent lookups of unknown ids: one fetch at most.
        clock[0] += 10
        await asyncio.gather(*(keys.candidates(f"x{i}") for i in range(20)))

    asyncio.run(run())
    assert len(fetches.urls) == 3
