"""Issue 13 item 22: ``originRequest.access.required: true`` lets only valid Access JWTs through.

A real connector (``adit tunnel run``) behind adit's own tunnel listener, run in the test
(``InProcessEdge``) so the test can send ``Cf-Access-Jwt-Assertion`` as an edge would after
Access; a raw-socket origin records what reaches it; the team's signing keys come from a real
HTTPS server (a test CA the connector trusts through ``SSL_CERT_FILE``), keys made with
``cryptography``. Only a token signed by the team's key, for the rule's audience, from its
issuer and not expired reaches the origin; everything else is a 403, and so is every request
while the keys cannot be fetched. Tokens naming unknown keys refetch the set, boundedly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adversary import (
    CLOSE_RESPONSE,
    InProcessEdge,
    JsonOverHttps,
    RawOrigin,
    canned,
    raw_origin,
)
from harness import Proc, Processes, adit_command

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

HOST = "app.example.test"
DOWN_HOST = "down.example.test"
AUD = "d7ec5b7fda23ffa8f8c8559fb37c66a2278208a78dbe376a3394b5ffec6911ba"
#: The connector's minimum time between two fetches of one issuer's keys.
REFETCH_INTERVAL = 5.0


class Signer:
    """An RSA key of the team (or not), with its key id."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def sign(self, claims: dict[str, Any], kid: str | None = None, alg: str = "RS256") -> str:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return jwt.encode(claims, pem, algorithm=alg, headers={"kid": kid or self.kid})


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[InProcessEdge]:
    running = InProcessEdge(tmp_path / "edge")
    yield running
    running.close()


@pytest.fixture
def origin() -> Iterator[RawOrigin]:
    with raw_origin(canned(CLOSE_RESPONSE)) as recorder:
        yield recorder


def _rule(host: str, origin: str, team_domain: str) -> dict[str, object]:
    access = {"required": True, "teamName": "team", "audTag": [AUD], "teamDomain": team_domain}
    return {"hostname": host, "service": origin, "originRequest": {"access": access}}


def _connector(
    processes: Processes, edge: InProcessEdge, config: dict[str, object], tmp: Path
) -> Proc:
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(config))
    credentials = edge.credentials(tmp / "credentials.json")
    proc = processes.start(
        "connector",
        [
            *adit_command(),
            "tunnel",
            "--config",
            str(path),
            "run",
            "--protocol",
            "http2",
            "--metrics",
            "127.0.0.1:0",
            "--credentials-file",
            str(credentials),
            str(edge.tunnel_id),
        ],
        env={"HOME": str(tmp), "SSL_CERT_FILE": str(edge.ca_path)},
    )
    edge.wait_registered()
    return proc


def test_only_a_valid_access_token_reaches_the_origin(
    processes: Processes, edge: InProcessEdge, origin: RawOrigin, tmp_path: Path
) -> None:
    team, other, rotated = Signer("a"), Signer("a"), Signer("b")
    context = edge.ca.api_server_context(("localhost",), ("127.0.0.1",))
    certs = JsonOverHttps(context, {"keys": [team.jwk()]})
    down = JsonOverHttps(context, None)
    try:
        config: dict[str, object] = {
            "ingress": [
                _rule(HOST, origin.url, certs.url),
                _rule(DOWN_HOST, origin.url, down.url),
                {"service": "http_status:404"},
            ]
        }
        connector = _connector(processes, edge, config, tmp_path)
        now = int(time.time())
        good = {"iss": certs.url, "aud": [AUD], "exp": now + 600, "iat": now, "sub": "u"}

        def status(token: str | None, host: str = HOST) -> int:
            headers = [] if token is None else [("Cf-Access-Jwt-Assertion", token)]
            return edge.request(host, "/private", headers).status

        # A token as Access issues it: through, the origin gets the request (token included).
        assert status(team.sign(good)) == 200
        origin.wait_for(lambda o: len(o.requests) == 1, what="the authenticated request")
        assert b"cf-access-jwt-assertion: " in origin.requests[0].lower()

        refused: dict[str, str | None] = {
            "missing": None,
            "empty": "",
            "not a jwt": "not-a-jwt",
            "another key, same kid": other.sign(good),
            "wrong audience": team.sign({**good, "aud": ["someone-else"]}),
            "no audience": team.sign({k: v for k, v in good.items() if k != "aud"}),
            "wrong issuer": team.sign({**good, "iss": "https://evil.example"}),
            "expired": team.sign({**good, "exp": now - 10}),
            "no expiry": team.sign({k: v for k, v in good.items() if k != "exp"}),
            "not yet valid": team.sign({**good, "nbf": now + 3600}),
            "HS256 with the public key": _hs256_with_public_key(team, good),
            "alg none": jwt.encode(good, "", algorithm="none"),
            "a tampered payload": _tampered(team.sign(good)),
        }
        for name, token in refused.items():
            assert status(token) == 403, name
        assert len(origin.requests) == 1, "a refused request reached the origin"

        # Keys that cannot be fetched: refused (fail closed), said so, the connector lives on.
        assert status(team.sign({**good, "iss": down.url}), DOWN_HOST) == 403
        connector.wait_for_log(r"Cannot fetch the Access signing keys")
        assert connector.popen.poll() is None

        # Made-up key ids do not make the connector hammer the team's endpoint.
        fetches, started = len(certs.fetches), time.monotonic()
        for _ in range(30):
            assert status(team.sign(good, kid=uuid.uuid4().hex)) == 403
        # At most one fetch per refetch interval (however slow this machine is today).
        allowed = 1 + (time.monotonic() - started) / REFETCH_INTERVAL
        assert len(certs.fetches) - fetches <= allowed, certs.fetches

        # A rotated key: unknown at first, fetched once the refetch interval allows.
        certs.document = {"keys": [team.jwk(), rotated.jwk()]}
        last = certs.fetches[-1][0]
        time.sleep(max(0.0, last + REFETCH_INTERVAL + 0.2 - time.monotonic()))
        assert status(rotated.sign(good)) == 200
        assert status(team.sign(good)) == 200
        origin.wait_for(lambda o: len(o.requests) == 3, what="the two later requests")
    finally:
        certs.close()
        down.close()


def _hs256_with_public_key(signer: Signer, claims: dict[str, Any]) -> str:
    """The old algorithm-confusion attack: an HMAC keyed with the RSA public key."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    public = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def _tampered(token: str) -> str:
    """The same signature over a payload that says something else."""
    import base64
    import json

    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"
