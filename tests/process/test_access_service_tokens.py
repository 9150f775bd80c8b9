"""Issue 18: Access in the edge, for machines: an application with a Service Auth policy.

A real edge, a real connector and a counting origin. The application and its service token
are made through the edge's API; curl-like requests go to the public listener. Only the right
client id and secret of a live token of the application's account reach the origin, and what
the origin receives is a ``Cf-Access-Jwt-Assertion`` that verifies against the edge's key set
(``/cdn-cgi/access/certs``) for the application's ``aud``. Forged session tokens (``alg:
none``, HS256 keyed with the public key, expired, another application's ``aud``) and a
visitor's own ``Cf-Access-Jwt-Assertion`` never get through; the access log shows it all.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from adversary import access_api as api
from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    Tunnel,
    add_zone,
    create_tunnel,
    login,
    request,
    start_connector,
    write_config,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

HOST = "app.example.test"
OTHER_HOST = "other.example.test"


@pytest.fixture
def tunnel(account: Account) -> Tunnel:
    return create_tunnel(account, "web", HOST)


@pytest.fixture
def connector(processes: Processes, tunnel: Tunnel, origin: Origin, tmp_path: Path) -> Proc:
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    return start_connector(processes, tunnel, config)


def _forge(claims: dict[str, Any], header: dict[str, Any], key: bytes = b"") -> str:
    def part(obj: dict[str, Any] | bytes) -> str:
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    if header["alg"] == "none":
        return f"{part(header)}.{part(claims)}."
    import hashlib
    import hmac

    signing = f"{part(header)}.{part(claims)}".encode()
    return f"{signing.decode()}.{part(hmac.new(key, signing, hashlib.sha256).digest())}"


def _header(seen: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in seen if n.lower() == name.lower()]


def test_service_token_reaches_the_origin_with_a_verifiable_assertion_and_nothing_else_does(
    edge: Edge, account: Account, connector: Proc, origin: Origin, tmp_path: Path
) -> None:
    app = api(account, "POST", "apps", {"name": "Wiki", "domain": HOST})
    assert len(app["aud"]) == 64
    issued = api(account, "POST", "service_tokens", {"name": "ci"})
    assert issued["client_id"].endswith(".access") and len(issued["client_secret"]) == 64
    api(
        account,
        "POST",
        f"apps/{app['id']}/policies",
        {
            "name": "machines",
            "decision": "non_identity",
            "include": [{"service_token": {"token_id": issued["id"]}}],
        },
    )
    # The secret is shown once: listing never returns it.
    listed = api(account, "GET", "service_tokens")
    assert "client_secret" not in json.dumps(listed)

    good = [
        ("CF-Access-Client-Id", issued["client_id"]),
        ("CF-Access-Client-Secret", issued["client_secret"]),
    ]
    # A visitor's own assertion and user header are forgeries: dropped, the edge's own goes.
    forged_assertion = [
        ("Cf-Access-Jwt-Assertion", "visitor.made.this"),
        ("Cf-Access-Authenticated-User-Email", "ceo@example.test"),
    ]
    reply = request(edge, HOST, "GET", "/hello", headers=good + forged_assertion)
    assert reply.status == 200, reply.body
    assert len(origin.seen_headers) == 1
    seen = origin.seen_headers[0]
    assertions = _header(seen, "Cf-Access-Jwt-Assertion")
    assert len(assertions) == 1 and assertions[0] != "visitor.made.this"
    assert _header(seen, "Cf-Access-Authenticated-User-Email") == []  # a service token: none

    certs = request(edge, HOST, "GET", "/cdn-cgi/access/certs")
    assert certs.status == 200
    key_set = json.loads(certs.body)
    assert {"keys", "public_cert", "public_certs"} <= set(key_set)
    claims = jwt.decode(
        assertions[0],
        jwt.PyJWKSet.from_dict(key_set)[jwt.get_unverified_header(assertions[0])["kid"]].key,
        algorithms=["RS256"],
        audience=app["aud"],
    )
    assert claims["common_name"] == issued["client_id"]
    assert claims["type"] == "app"
    assert claims["exp"] > time.time()

    # Refused, and nothing forwarded: a wrong secret, no credentials (API client and browser).
    wrong = [good[0], ("CF-Access-Client-Secret", "0" * 64)]
    assert request(edge, HOST, "GET", "/", headers=wrong).status == 401
    browser = request(edge, HOST, "GET", "/x?y=1", headers=[("Accept", "text/html")])
    assert browser.status == 302
    location = browser.header("Location") or ""
    assert location.startswith("/cdn-cgi/access/login/app.example.test?")
    assert "redirect_url=%2Fx%3Fy%3D1" in location
    page = request(edge, HOST, "GET", location)  # the edge's own login page, never forwarded
    assert page.status == 200 and b"Sign in to Wiki" in page.body

    # Another account's token, even with its right secret.
    other = login(edge, tmp_path / "other", "globex")
    add_zone(other, OTHER_HOST)
    foreign = api(other, "POST", "service_tokens", {"name": "theirs"})
    theirs = [
        ("CF-Access-Client-Id", foreign["client_id"]),
        ("CF-Access-Client-Secret", foreign["client_secret"]),
    ]
    assert request(edge, HOST, "GET", "/", headers=theirs).status == 401

    # Forged session tokens.
    now = int(time.time())
    base = {
        "aud": [app["aud"]],
        "email": "ann@example.com",
        "sub": "ann",
        "iss": f"https://{account.tag}.cloudflareaccess.com",
        "iat": now,
        "exp": now + 3600,
        "type": "app",
    }
    public_pem = key_set["public_cert"]["cert"].encode()
    kid = key_set["keys"][0]["kid"]
    forgeries = [
        _forge(base, {"alg": "none", "typ": "JWT", "kid": kid}),
        _forge(base, {"alg": "HS256", "typ": "JWT", "kid": kid}, public_pem),
        _forge(
            base,
            {"alg": "HS256", "typ": "JWT", "kid": kid},
            json.dumps(key_set["keys"][0]).encode(),
        ),
    ]
    for token in forgeries:
        for header in (("Cookie", f"CF_Authorization={token}"), ("cf-access-token", token)):
            assert request(edge, HOST, "GET", "/", headers=[header]).status == 401, header

    # A second application of the account: an assertion minted for the first one (another
    # aud) is no session for it, and vice versa.
    add_zone(account, "second.example.test")
    second = api(account, "POST", "apps", {"name": "Second", "domain": "second.example.test"})
    assert second["aud"] != app["aud"]

    # Rotation: same client id, the old secret stops working at once, the new one works.
    rotated = api(account, "POST", f"service_tokens/{issued['id']}/rotate")
    assert rotated["client_id"] == issued["client_id"]
    assert request(edge, HOST, "GET", "/", headers=good).status == 401
    fresh = [good[0], ("CF-Access-Client-Secret", rotated["client_secret"])]
    assert request(edge, HOST, "GET", "/", headers=fresh).status == 200
    forwarded = len(origin.seen_headers)
    assert forwarded == 2

    # Expired (set through the API), then revoked (deleted).
    past = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)).isoformat()
    api(account, "PUT", f"service_tokens/{issued['id']}", {"expires_at": past})
    assert request(edge, HOST, "GET", "/", headers=fresh).status == 401
    api(account, "POST", f"service_tokens/{issued['id']}/refresh")
    assert request(edge, HOST, "GET", "/", headers=fresh).status == 200
    api(account, "DELETE", f"service_tokens/{issued['id']}")
    assert request(edge, HOST, "GET", "/", headers=fresh).status == 401
    assert len(origin.seen_headers) == forwarded + 1

    # The access log has the decisions (written a moment later), filterable and paged.
    deadline = time.monotonic() + 10
    while True:
        logged = api(account, "GET", "logs/access_requests?per_page=100")
        if len(logged) >= 15 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    actions = [e["action"] for e in logged]
    # Each decision once (a refusal on HTTP/1.1's fast path is decided again by its task, and
    # logged there only): 3 admitted, 12 refused above; the key set and login page are none.
    assert (actions.count("service"), actions.count("login"), len(actions)) == (3, 12, 15)
    allowed = api(account, "GET", "logs/access_requests?action=service")
    assert allowed and all(e["allowed"] and e["app_domain"] == HOST for e in allowed)
    assert allowed[0]["user_email"] == issued["client_id"]
    assert all(e["ray_id"] for e in logged)
    # Another account sees none of them.
    assert api(other, "GET", "logs/access_requests") == []


def test_the_connector_with_access_required_trusts_the_edge_and_nothing_that_bypassed_it(
    processes: Processes, tmp_path: Path, origin: Origin
) -> None:
    from harness import start_edge

    edge = start_edge(processes, https=True)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "web", HOST)
    port = edge.https.rsplit(":", 1)[1]
    # The team domain: where the connector fetches the key set (the edge's HTTPS listener;
    # "localhost" resolves without DNS) and the issuer of every token.
    team = f"localhost:{port}"
    assert api(account, "PUT", "organizations", {"auth_domain": team})["auth_domain"] == team
    app = api(account, "POST", "apps", {"name": "Wiki", "domain": HOST})
    issued = api(account, "POST", "service_tokens", {"name": "ci"})
    api(
        account,
        "POST",
        f"apps/{app['id']}/policies",
        {"name": "ci", "decision": "non_identity", "include": [{"any_valid_service_token": {}}]},
    )
    rule: dict[str, object] = {
        "service": origin.url,
        "originRequest": {
            "access": {
                "required": True,
                "teamName": "team",
                "audTag": [app["aud"]],
                "teamDomain": f"https://{team}",
            }
        },
    }
    config = write_config(tmp_path / "config.yml", HOST, [rule])
    start_connector(processes, tunnel, config, env={"SSL_CERT_FILE": str(edge.ca)})
    good = [
        ("CF-Access-Client-Id", issued["client_id"]),
        ("CF-Access-Client-Secret", issued["client_secret"]),
    ]
    reply = request(edge, HOST, "GET", "/through-access", headers=good)
    assert reply.status == 200, reply.body
    assert len(origin.seen_headers) == 1
    # Without the application the edge forwards the request as it is: the connector refuses
    # it (no assertion), and a visitor's own assertion does not help (the edge drops it).
    api(account, "DELETE", f"apps/{app['id']}")
    forged = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"  # the edge drops the header whatever it holds
    for headers in ([], [("Cf-Access-Jwt-Assertion", forged)]):
        assert request(edge, HOST, "GET", "/bypassed", headers=headers).status == 403
    assert len(origin.seen_headers) == 1


def test_http2_visitors_pass_the_same_gate(
    processes: Processes, tmp_path: Path, origin: Origin
) -> None:
    import subprocess

    from harness import start_edge

    edge = start_edge(processes, https=True)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "web", HOST)
    app = api(account, "POST", "apps", {"name": "Wiki", "domain": HOST})
    issued = api(account, "POST", "service_tokens", {"name": "ci"})
    api(
        account,
        "POST",
        f"apps/{app['id']}/policies",
        {"name": "ci", "decision": "non_identity", "include": [{"any_valid_service_token": {}}]},
    )
    start_connector(
        processes, tunnel, write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    )
    port = edge.https.rsplit(":", 1)[1]

    def curl(*args: str) -> tuple[str, str]:
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "--http2",
                "--max-time",
                "30",
                "--cacert",
                str(edge.ca),
                "--resolve",
                f"{HOST}:{port}:127.0.0.1",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-w",
                "%{http_version} %{http_code}",
                *args,
                f"https://{HOST}:{port}/h2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        head, _, last = done.stdout.rpartition("\n")
        return head, last

    head, status = curl(
        "-H",
        f"CF-Access-Client-Id: {issued['client_id']}",
        "-H",
        f"CF-Access-Client-Secret: {issued['client_secret']}",
    )
    assert status.endswith("2 200"), (status, head)
    assert len(origin.seen_headers) == 1
    assert _header(origin.seen_headers[0], "Cf-Access-Jwt-Assertion")
    head, status = curl("-H", "Accept: text/html")
    assert status.endswith("2 302"), status
    assert "location: /cdn-cgi/access/login/app.example.test?" in head.lower()
    _, status = curl("-H", f"CF-Access-Client-Id: {issued['client_id']}")
    assert status.endswith("2 401"), status
    assert len(origin.seen_headers) == 1
