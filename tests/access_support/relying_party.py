"""A tiny relying party built from adit's Access login modules, for the browser-flow tests
until the edge serves them itself: plain HTTP on 127.0.0.1 in a thread of the test process.

Routes (the edge's paths):

- ``GET /cdn-cgi/access/login?redirect_url=PATH``: the login page (sets the pre-login cookie
  that CSRF tokens are bound to);
- ``POST /cdn-cgi/access/login/start``: begins the OIDC flow (flow cookie, 302 to provider);
- ``GET /cdn-cgi/access/callback``: finishes it (session cookie, 302 back to the path);
- ``POST /cdn-cgi/access/login/pin`` and ``/pin/verify``: the one-time PIN;
- ``GET /cdn-cgi/access/denied``: the denial page;
- any other path: 200 with the session's identity as JSON, or 302 to the login page.

``results`` records every login's outcome (an identity, or the refusal's message).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlsplit

from adit.edge.access.login_page import (
    PAGE_HEADERS,
    ProviderChoice,
    cookie_header,
    csrf_token,
    csrf_valid,
    denied_page,
    login_page,
    pin_entry_page,
    safe_return_path,
)
from adit.edge.access.oidc_client import OidcClient, OidcError, OidcSettings
from adit.edge.access.pin import PinBook, PinLocked, PinMailer, PinResult, SmtpSettings
from ports import free_port

APP = "Test App"
LOGIN_COOKIE = "CF_AccessLogin"
FLOW_COOKIE = "CF_AccessFlow"
SESSION_COOKIE = "CF_Authorization"
CALLBACK = "/cdn-cgi/access/callback"


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RelyingParty:
    host: str
    port: int
    oidc: OidcClient
    pins: PinBook
    mailer: PinMailer | None
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sessions: dict[str, dict[str, object]] = field(default_factory=dict)
    results: list[object] = field(default_factory=list)
    #: While set, callbacks are not finished but kept here (the browser cannot be stopped at a
    #: redirect: Playwright routes only a chain's first request): the tests replay them.
    held: list[str] | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def local_url(self, path: str) -> str:
        """For clients outside the browser, which does the *.example.test mapping."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        parts = urlsplit(target)
        path, query = parts.path, dict(parse_qsl(parts.query))
        cookies = {k: m.value for k, m in SimpleCookie(headers.get("cookie", "")).items()}
        form = dict(parse_qsl(body.decode())) if method == "POST" else {}
        if path == "/cdn-cgi/access/login" and method == "GET":
            return self._login(cookies, safe_return_path(query.get("redirect_url")))
        if path.startswith("/cdn-cgi/access/login/") and method == "POST":
            if not csrf_valid(self.csrf_key, cookies.get(LOGIN_COOKIE), form.get("csrf")):
                self.results.append("csrf refused")
                return Response(403, b"login refused: the form is not from this browser")
            back = safe_return_path(form.get("return_to"))
            if path == "/cdn-cgi/access/login/start":
                flow_id, url = await self.oidc.begin(self.url(CALLBACK), back)
                return Response(
                    302,
                    headers=[
                        ("location", url),
                        ("set-cookie", self._cookie(FLOW_COOKIE, flow_id, CALLBACK, 600)),
                    ],
                )
            if path == "/cdn-cgi/access/login/pin":
                return await self._pin_mail(form.get("email", ""), back, cookies)
            if path == "/cdn-cgi/access/login/pin/verify":
                return self._pin_verify(form, back, cookies)
        if path == CALLBACK and self.held is not None:
            self.held.append(target)
            return Response(200, b"held by the test")
        if path == CALLBACK:
            try:
                identity, flow = await self.oidc.finish(cookies.get(FLOW_COOKIE), query)
            except OidcError as exc:
                self.results.append(str(exc))
                return Response(403, f"login refused: {exc}".encode())
            self.results.append(identity)
            return self._session(
                {"email": identity.email, "groups": list(identity.groups)}, flow.return_to
            )
        if path == "/cdn-cgi/access/denied":
            return Response(403, denied_page(APP, email="bob@other.test", ray_id="8f2c0e1d"))
        session = self.sessions.get(cookies.get(SESSION_COOKIE, ""))
        if session is None:
            login = "/cdn-cgi/access/login?redirect_url=" + quote(target, safe="/")
            return Response(302, headers=[("location", login)])
        return Response(
            200,
            json.dumps({"path": target, **session}).encode(),
            [("content-type", "application/json")],
        )

    def _cookie(self, name: str, value: str, path: str = "/", max_age: int | None = None) -> str:
        # Plain HTTP in this test: not Secure (the edge's public listener is HTTPS).
        return cookie_header(name, value, path=path, max_age=max_age, secure=False)

    def _login(self, cookies: dict[str, str], back: str, error: str | None = None) -> Response:
        binding = cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        providers = [
            ProviderChoice("idp-oidc", "Test IdP", "oidc"),
            ProviderChoice("idp-pin", "One-time PIN", "onetimepin"),
        ]
        page = login_page(
            APP, providers, return_to=back, csrf=csrf_token(self.csrf_key, binding), error=error
        )
        return Response(
            200, page, [*PAGE_HEADERS, ("set-cookie", self._cookie(LOGIN_COOKIE, binding))]
        )

    async def _pin_mail(self, email: str, back: str, cookies: dict[str, str]) -> Response:
        assert self.mailer is not None
        try:
            pin = self.pins.issue(email, time.monotonic())
        except PinLocked as exc:
            return self._login(cookies, back, str(exc))
        await self.mailer.send(email, pin, APP)
        csrf = csrf_token(self.csrf_key, cookies[LOGIN_COOKIE])
        page = pin_entry_page(APP, provider="idp-pin", email=email, return_to=back, csrf=csrf)
        return Response(200, page, list(PAGE_HEADERS))

    def _pin_verify(self, form: dict[str, str], back: str, cookies: dict[str, str]) -> Response:
        email = form.get("email", "")
        result = self.pins.check(email, form.get("pin", ""), time.monotonic())
        self.results.append(result)
        if result is PinResult.ACCEPTED:
            return self._session({"email": email.lower(), "groups": []}, back)
        csrf = csrf_token(self.csrf_key, cookies[LOGIN_COOKIE])
        page = pin_entry_page(
            APP,
            provider="idp-pin",
            email=email,
            return_to=back,
            csrf=csrf,
            error=f"That code did not work ({result.value}).",
        )
        return Response(403 if result is PinResult.LOCKED else 401, page, list(PAGE_HEADERS))

    def _session(self, identity: dict[str, object], back: str) -> Response:
        session_id = secrets.token_urlsafe(32)
        self.sessions[session_id] = identity
        return Response(
            302,
            headers=[
                ("location", safe_return_path(back)),
                ("set-cookie", self._cookie(SESSION_COOKIE, session_id)),
            ],
        )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = min(int(headers.get("content-length", "0")), 1 << 16)
            body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
            try:
                response = await self.handle(method, target, headers, body)
            except Exception as exc:  # a test's failure shows in the page, not as a hang
                self.results.append(f"error: {type(exc).__name__}: {exc}")
                response = Response(500, f"relying party error: {exc!r}".encode())
            out = [f"HTTP/1.1 {response.status} X", f"content-length: {len(response.body)}"]
            out += [f"{k}: {v}" for k, v in response.headers]
            out.append("connection: close")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + response.body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()


def planned_origin(host: str = "app.example.test") -> tuple[str, int]:
    """A host and free port for a relying party, known before the provider starts."""
    return host, free_port()


@contextmanager
def relying_party(
    host: str,
    port: int,
    settings: OidcSettings,
    smtp: SmtpSettings | None = None,
) -> Iterator[RelyingParty]:
    """The relying party serving on 127.0.0.1:``port`` in its own thread and event loop."""
    rp = RelyingParty(
        host, port, OidcClient(settings), PinBook(), PinMailer(smtp) if smtp else None
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        server = await asyncio.start_server(rp.serve, "127.0.0.1", port)
        ready.set()
        async with server:
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "relying party did not start"
        yield rp
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
