"""Issue 18: a login in progress lives in the edge's store, not in one edge process. Two
``adit edge`` processes share one state directory (two HTTPS ports, as two nodes behind one
name would be); one connector holds a connection to each. A login begun at one finishes at
the other, and whatever is single-use stays single-use across them:

- OIDC (npm ``oidc-provider`` over TLS, in headless Chromium): the process that began the
  login stops while the visitor is at the provider; the provider's redirect back, refused
  there, is carried to the other process, which completes it; the same callback replayed at
  either (the first one restarted), with the browser's flow cookie, is refused.
- One-time PIN (aiosmtpd): mailed by one process, entered at the other; the right PIN sent to
  both at once is accepted once; wrong PINs made at either count to one lock.
- ``adit access login``'s hand-over: sealed at one process, fetched by both at once: one gets
  it, the other a 404.
- An edge restarted between mailing the PIN and entering it still completes the login.

The provider's CA is trusted through the provider's own ``ca_pem`` setting: neither edge has
any process-wide trust for it (no ``SSL_CERT_FILE``). Without ``ca_pem`` the login page says
the provider cannot be reached, and the edge's log names the provider and the TLS failure.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from playwright.sync_api import Browser

from access_support.browser import new_context
from access_support.oidc import USERS, OidcProvider, sign_in_at_provider, start_oidc_provider
from access_support.pki import ServiceCa, write_service_ca
from access_support.smtp import Mailbox, smtp_server
from adit.protocol.token_transfer import new_key, open_box, public_key_text
from adversary import access_api as api
from adversary import api_call
from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    create_tunnel,
    edge_args,
    login,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

HOST = "app.example.test"
CALLBACK = "/cdn-cgi/access/callback"
#: An edge's line for a connector's connection it registered.
REGISTERED = r"Registered tunnel connection tunnelID="


@dataclass(frozen=True)
class Provider:
    oidc: OidcProvider
    ca: ServiceCa
    ports: tuple[int, int]


@dataclass
class Pair:
    """Two edge processes on one store, an account, the Access application, the origin."""

    a: Edge
    b: Edge
    account: Account
    origin: Origin
    mailbox: Mailbox
    app: dict[str, Any]
    oidc_idp: dict[str, Any]
    pin_idp: dict[str, Any]
    ports: tuple[int, int]
    processes: Processes

    def url(self, which: int, path: str) -> str:
        return f"https://{HOST}:{self.ports[which]}{path}"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    tmp = tmp_path_factory.mktemp("provider")
    ca = write_service_ca(tmp / "pki")
    ports = (free_port(), free_port())
    redirects = [f"https://{HOST}:{port}{CALLBACK}" for port in ports]
    with start_oidc_provider(tmp, redirects, tls=ca) as oidc:
        yield Provider(oidc, ca, ports)


def _edge(processes: Processes, name: str, location: str, port: int) -> Edge:
    # No SSL_CERT_FILE: the provider's CA reaches the edge only through its ca_pem setting.
    return start_edge(processes, name, location, https=True, https_listen=f"127.0.0.1:{port}")


def _oidc_config(provider: Provider, *, with_ca: bool) -> dict[str, Any]:
    oidc = provider.oidc
    config: dict[str, Any] = {
        "discovery_url": oidc.issuer,
        "client_id": oidc.client_id,
        "client_secret": oidc.client_secret,
        "scopes": ["openid", "email", "groups"],
    }
    if with_ca:
        config["ca_pem"] = provider.ca.ca.read_text()
    return config


@pytest.fixture
def pair(
    provider: Provider, processes: Processes, origin: Origin, tmp_path: Path
) -> Iterator[Pair]:
    a = _edge(processes, "edge-a", "a", provider.ports[0])
    (processes.tmp / "edge-b-state").symlink_to(a.state_dir)
    b = _edge(processes, "edge-b", "b", provider.ports[1])
    account = login(a, tmp_path / "home")
    tunnel = create_tunnel(account, "web", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    start_connector(
        processes,
        tunnel,
        config,
        extra=["--protocol", "http2", *edge_args(a, b), "--ha-connections", "2"],
        wait=2,
    )
    for edge in (a, b):
        edge.proc.wait_for_log(REGISTERED, timeout=20)
    with smtp_server() as mailbox:
        oidc_idp = api(
            account,
            "POST",
            "identity_providers",
            {"name": "Test IdP", "type": "oidc", "config": _oidc_config(provider, with_ca=True)},
        )
        pin_idp = api(
            account,
            "POST",
            "identity_providers",
            {
                "name": "One-time PIN",
                "type": "onetimepin",
                "config": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": mailbox.port,
                    "smtp_starttls": False,
                    "smtp_from": "access@example.test",
                },
            },
        )
        app = api(
            account,
            "POST",
            "apps",
            {"name": "Team Wiki", "domain": HOST, "allowed_idps": [oidc_idp["id"]]},
        )
        api(
            account,
            "POST",
            f"apps/{app['id']}/policies",
            {
                "name": "staff",
                "decision": "allow",
                "include": [{"email_domain": {"domain": "example.com"}}],
            },
        )
        # The PIN provider joins last: a process whose login page offers it has read every
        # write before it, the policy too (each process reads another's writes within its
        # store watcher's interval; under load the application alone was seen first once, and
        # a right PIN was then denied for want of the policy).
        api(account, "PUT", f"apps/{app['id']}", {"allowed_idps": [oidc_idp["id"], pin_idp["id"]]})
        pair = Pair(
            a, b, account, origin, mailbox, app, oidc_idp, pin_idp, provider.ports, processes
        )
        probe = Visitor(pair)
        try:
            for which in (0, 1):
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    page = probe.send(which, "GET", "/cdn-cgi/access/login?redirect_url=/inbox")
                    if page.status_code == 200 and "One-time PIN" in page.text:
                        break
                    time.sleep(0.2)
                else:
                    raise AssertionError(f"edge {which} never offered the PIN provider")
        finally:
            probe.close()
        origin.seen_headers.clear()
        yield pair


class Visitor:
    """A browser-less visitor with one cookie jar for both edge processes (cookies do not
    tell ports apart, as a browser's do not), verifying the edges' certificates."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        tls = ssl.create_default_context(cafile=str(pair.a.ca))
        self.http = httpx.Client(verify=tls, timeout=20, follow_redirects=False)
        self.csrf = ""

    def close(self) -> None:
        self.http.close()

    def send(self, which: int, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"https://127.0.0.1:{self.pair.ports[which]}{path}"
        headers = {"Host": HOST, **kwargs.pop("headers", {})}
        extensions = {"sni_hostname": HOST}
        request = self.http.build_request(
            method, url, headers=headers, extensions=extensions, **kwargs
        )
        return self.http.send(request)

    def login_page(self, which: int) -> None:
        page = self.send(which, "GET", "/cdn-cgi/access/login?redirect_url=/inbox")
        assert page.status_code == 200, page.text
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None, page.text
        self.csrf = token.group(1)

    def form(self, which: int, path: str, **fields: str) -> httpx.Response:
        body = {"return_to": "/inbox", "csrf": self.csrf, **fields}
        return self.send(which, "POST", path, data=body)

    def ask_pin(self, which: int, email: str) -> None:
        answer = self.form(
            which, "/cdn-cgi/access/login/pin", provider=self.pair.pin_idp["id"], email=email
        )
        assert answer.status_code == 200, answer.text
        assert 'name="pin"' in answer.text

    def enter_pin(self, which: int, email: str, pin: str) -> httpx.Response:
        return self.form(
            which,
            "/cdn-cgi/access/login/pin/verify",
            provider=self.pair.pin_idp["id"],
            email=email,
            pin=pin,
        )


def pin_of(mailbox: Mailbox, address: str) -> str:
    deadline = time.monotonic() + 15
    while not mailbox.to(address) and time.monotonic() < deadline:
        time.sleep(0.1)
    mails = mailbox.to(address)
    assert mails, f"no mail to {address}"
    body = mails[-1].get_body(("plain",))
    assert body is not None
    match = re.search(r"^ +(\d{6})\s*$", body.get_content(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def _other(pin: str) -> str:
    return f"{(int(pin) + 1) % 1_000_000:06d}"


def _session(answer: httpx.Response) -> str | None:
    for value in answer.headers.get_list("set-cookie"):
        if value.startswith("CF_Authorization=") and not value.startswith("CF_Authorization=;"):
            return value.split(";", 1)[0].split("=", 1)[1]
    return None


def test_oidc_login_begun_at_one_process_finishes_at_the_other(
    pair: Pair, chromium: Browser
) -> None:
    context = new_context(chromium, ignore_https_errors=True)
    try:
        failed: list[str] = []
        context.on("requestfailed", lambda request: failed.append(request.url))
        page = context.new_page()
        page.goto(pair.url(0, "/private/report?q=1"))
        assert urlsplit(page.url).path == f"/cdn-cgi/access/login/{HOST}"
        page.click("text=Sign in with Test IdP")
        page.wait_for_selector("input[name=email]")
        # The process that began the login goes away while the visitor is at the provider:
        # the provider's answer to it fails, and is carried to the other process (as a load
        # balancer in front of both would), which finishes the login.
        pair.a.proc.stop()
        sign_in_at_provider(page, USERS[0].email, USERS[0].password, None)
        deadline = time.monotonic() + 20
        while not [u for u in failed if CALLBACK in u] and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        (back_to_a,) = [u for u in failed if CALLBACK in u]
        parts = urlsplit(back_to_a)
        assert parts.port == pair.ports[0]
        flow = [c for c in context.cookies() if c["name"] == "CF_AccessFlow"]
        assert len(flow) == 1
        # (A new tab: the first is still showing its network error.)
        page = context.new_page()
        page.goto(urlunsplit(parts._replace(netloc=f"{HOST}:{pair.ports[1]}")))
        page.wait_for_url(pair.url(1, "/private/report?q=1"))
        seen = {n.lower(): v for n, v in pair.origin.seen_headers[-1]}
        assert seen["cf-access-authenticated-user-email"] == "alice@example.com"
        assert not [c for c in context.cookies() if c["name"] == "CF_AccessFlow"]
    finally:
        context.close()

    # The first process, started again, is shown the same callback with the browser's flow
    # cookie (a replay): the flow was taken once, by the other process.
    (pair.processes.tmp / "edge-a-ready.json").unlink()
    _edge(pair.processes, "edge-a", "a", pair.ports[0])
    seen_before = len(pair.origin.seen_headers)
    visitor = Visitor(pair)
    try:
        for which in (0, 1):
            replay = visitor.send(
                which,
                "GET",
                f"{CALLBACK}?{parts.query}",
                headers={"Cookie": f"CF_AccessFlow={flow[0]['value']}"},
            )
            assert replay.status_code == 403
            assert "no login in progress" in replay.text
            assert _session(replay) is None
    finally:
        visitor.close()
    assert len(pair.origin.seen_headers) == seen_before


def test_pin_mailed_by_one_process_is_taken_once_and_counted_by_both(pair: Pair) -> None:
    visitor = Visitor(pair)
    try:
        visitor.login_page(0)
        visitor.ask_pin(0, "carol@example.com")
        pin = pin_of(pair.mailbox, "carol@example.com")
        # Wrong PINs at either process count together: four leave one try.
        assert [
            visitor.enter_pin(i % 2, "carol@example.com", _other(pin)).status_code for i in range(4)
        ] == [401] * 4
        # The right PIN sent to both at once: accepted once.
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda i: visitor.enter_pin(i, "carol@example.com", pin), (0, 1))
            )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [302, 401], [(a.status_code, a.text[:200]) for a in answers]
        winner = next(a for a in answers if a.status_code == 302)
        assert winner.headers["location"] == "/inbox"
        assert _session(winner) is not None

        # A fifth wrong PIN, whichever process it reaches, locks the address at both.
        visitor.ask_pin(1, "alice@example.com")
        right = pin_of(pair.mailbox, "alice@example.com")
        statuses = [
            visitor.enter_pin(i % 2, "alice@example.com", _other(right)).status_code
            for i in range(5)
        ]
        assert statuses == [401] * 4 + [403]
        for which in (0, 1):
            assert visitor.enter_pin(which, "alice@example.com", right).status_code == 403
    finally:
        visitor.close()


def test_cli_hand_over_is_claimed_once_across_processes(pair: Pair) -> None:
    visitor = Visitor(pair)
    try:
        visitor.login_page(1)
        visitor.ask_pin(1, "carol@example.com")
        signed_in = visitor.enter_pin(
            0, "carol@example.com", pin_of(pair.mailbox, "carol@example.com")
        )
        session = _session(signed_in)
        assert session is not None
        key = new_key()
        public = public_key_text(key)
        # (The session cookie is in the visitor's jar, beside the login page's.)
        ask = visitor.send(0, "GET", f"/cdn-cgi/access/cli?token={public}")
        assert ask.status_code == 200 and "Allow the command line" in ask.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', ask.text)
        assert csrf is not None
        # Nothing to fetch before the browser says yes.
        assert visitor.send(1, "GET", f"/cdn-cgi/access/transfer/{public}").status_code == 404
        allowed = visitor.send(
            0,
            "POST",
            "/cdn-cgi/access/cli",
            data={"token": public, "redirect_url": "/", "csrf": csrf.group(1)},
        )
        assert allowed.status_code == 200, allowed.text
        with ThreadPoolExecutor(2) as pool:
            claims = list(
                pool.map(
                    lambda i: visitor.send(i, "GET", f"/cdn-cgi/access/transfer/{public}"), (0, 1)
                )
            )
        assert sorted(c.status_code for c in claims) == [200, 404]
        sealed = next(c for c in claims if c.status_code == 200).content
        assert open_box(key, sealed) == session
        # A third try at either process: gone.
        for which in (0, 1):
            assert (
                visitor.send(which, "GET", f"/cdn-cgi/access/transfer/{public}").status_code == 404
            )
    finally:
        visitor.close()


def test_a_restart_between_mail_and_pin_still_completes(pair: Pair) -> None:
    visitor = Visitor(pair)
    try:
        visitor.login_page(0)
        visitor.ask_pin(0, "carol@example.com")
        pin = pin_of(pair.mailbox, "carol@example.com")
        pair.a.proc.stop()
        (pair.processes.tmp / "edge-a-ready.json").unlink()
        _edge(pair.processes, "edge-a", "a", pair.ports[0])
        # The form the old process served (its CSRF token) and the PIN it mailed both hold.
        answer = visitor.enter_pin(0, "carol@example.com", pin)
        assert answer.status_code == 302, answer.text
        assert _session(answer) is not None
    finally:
        visitor.close()


def test_without_ca_pem_the_provider_is_not_trusted_and_the_log_says_why(
    pair: Pair, provider: Provider
) -> None:
    api(
        pair.account,
        "PUT",
        f"identity_providers/{pair.oidc_idp['id']}",
        {"name": "Test IdP", "type": "oidc", "config": _oidc_config(provider, with_ca=False)},
    )
    visitor = Visitor(pair)
    try:
        visitor.login_page(1)
        deadline = time.monotonic() + 15
        while True:
            # Another process's change reaches this one within the store watcher's interval.
            answer = visitor.form(1, "/cdn-cgi/access/login/start", provider=pair.oidc_idp["id"])
            if answer.status_code != 302 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert answer.status_code == 400, answer.text
        assert "Test IdP cannot be reached right now" in answer.text
        line = pair.b.proc.wait_for_log(r"identity provider 'Test IdP' unavailable")
        (said,) = [x for x in line.splitlines() if "identity provider 'Test IdP' unavailable" in x]
        assert "CERTIFICATE_VERIFY_FAILED" in said and "ca_pem" in said
    finally:
        visitor.close()
    # A ca_pem that is no certificate is refused when it is set, naming the setting.
    status, raw = api_call(
        pair.account,
        "PUT",
        f"/client/v4/accounts/{pair.account.tag}/access/identity_providers/{pair.oidc_idp['id']}",
        json.dumps(
            {
                "name": "Test IdP",
                "type": "oidc",
                "config": {**_oidc_config(provider, with_ca=False), "ca_pem": "not a cert"},
            }
        ).encode(),
    )
    assert status == 400
    assert "ca_pem" in json.loads(raw)["errors"][0]["message"]
