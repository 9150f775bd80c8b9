"""The browser login flow, served by the edge on every application hostname under
``/cdn-cgi/access/`` (never forwarded): Cloudflare's paths where it has them.

=================================== ======= ==============================================
path                                method  answer
=================================== ======= ==============================================
/cdn-cgi/access/login[/<host>]      GET     the login page (the application's providers)
/cdn-cgi/access/login/start         POST    302 to the OIDC provider (PKCE, state, nonce)
/cdn-cgi/access/callback            GET     code exchange, ID token → identity → decision
/cdn-cgi/access/login/pin           POST    a PIN mailed; the PIN entry page
/cdn-cgi/access/login/pin/verify    POST    PIN checked → identity → decision
/cdn-cgi/access/logout              GET     the sessions ended (revoked), cookies cleared
/cdn-cgi/access/get-identity        GET     the session's identity as JSON (401 without)
/cdn-cgi/access/cli?token=KEY       GET     ``adit access login``: the session's token
                                            sealed to the CLI's KEY (login first if none)
/cdn-cgi/access/transfer/KEY        GET     the sealed token, once (404 until then)
/cdn-cgi/access/cert_sign           POST    a short-lived SSH certificate (:mod:`.cert_sign`)
=================================== ======= ==============================================

A decision after login evaluates the application's policies with the identity (e-mail,
groups), the country of the visitor's address (``--geoip-db``) and the address itself. An
allowed visitor gets the ``CF_Authorization`` cookie (HttpOnly, SameSite=Lax, Secure over
HTTPS, host-only, with the application's path as ``Path``: :mod:`.app_cookies`) holding a
session JWT and a 302 back to the same-host path they asked for; a denied one gets the 403
page naming the application. Either way the decision is in the access log.

Every form post carries a CSRF token bound to the browser's pre-login cookie; an OIDC callback
is accepted only with the flow cookie of the browser that began it (:mod:`.oidc_client`).

What a login in progress needs (the OIDC flow, the mailed PIN and its attempt count, the CLI's
sealed token, the CSRF key) lives in the edge's store (:mod:`.login_state`), not in this
process: a login begun at one edge process finishes at another on the same state directory,
or at this one after a restart, and each of them is used at most once across all of them.
The application a form or callback is for is the one guarding the path the visitor returns
to, and its provider must be one the application allows.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, quote, urlsplit

from adit.edge.access.app_cookies import COOKIE, cookie_path
from adit.edge.access.cert_sign import CERT_SIGN, CertSigner
from adit.edge.access.engine import Subject, evaluate
from adit.edge.access.gate import AccessGate, FlowRequest
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
from adit.edge.access.login_state import LoginState, TransfersFull
from adit.edge.access.model import Application, IdentityProvider
from adit.edge.access.oidc_client import FlowRefused, OidcClient, OidcError, OidcSettings
from adit.edge.access.pages import JsonAnswer
from adit.edge.access.pin import PinLocked, PinMailer, PinResult, SmtpSettings
from adit.edge.access.store import AccessStore
from adit.edge.pages import ErrorPage
from adit.protocol.token_transfer import TransferError, parse_public_key, seal

__all__ = ["FLOW_COOKIE", "LOGIN_COOKIE", "HtmlAnswer", "LoginFlow"]

log = logging.getLogger("adit.edge.access")

PREFIX: Final = "/cdn-cgi/access"
LOGIN: Final = PREFIX + "/login"
CALLBACK: Final = PREFIX + "/callback"
#: The pre-login cookie CSRF tokens are bound to (a random value, no meaning of its own).
LOGIN_COOKIE: Final = "CF_AccessLogin"
#: ``<idp id>.<flow id>`` of an OIDC login in progress (only sent back to the callback).
FLOW_COOKIE: Final = "CF_AccessFlow"
_FLOW_MAX_AGE: Final = 600
#: A namespace for the ``sub`` of Access identities (stable per account and e-mail).
_USER_NAMESPACE: Final = uuid.UUID("6f1c9a52-3b0e-4f7c-9d3e-0a1d2c3b4e5f")
#: The paths forms are posted to (each checked for the browser's CSRF token).
_FORMS: Final = (LOGIN + "/start", LOGIN + "/pin", LOGIN + "/pin/verify", PREFIX + "/cli")
_HTML_HEADERS: Final = tuple((n, v) for n, v in PAGE_HEADERS if n != "content-type")


@dataclass(frozen=True, slots=True)
class HtmlAnswer(ErrorPage):
    """A page of the flow: its own HTML and headers (cookies, ``Location``)."""

    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: ClassVar[str] = "text/html; charset=utf-8"

    def render(self, host: str, ray: str) -> bytes:
        return self.body

    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        return self.headers


def _html(status: int, body: bytes, *headers: tuple[str, str]) -> HtmlAnswer:
    return HtmlAnswer(status, str(status), "", "", body=body, headers=(*_HTML_HEADERS, *headers))


def _redirect(location: str, *headers: tuple[str, str]) -> HtmlAnswer:
    return HtmlAnswer(
        302,
        "302",
        "",
        "",
        body=b"",
        headers=(("Location", location), ("Cache-Control", "no-store"), *headers),
    )


def _json(status: int, what: dict[str, Any], *headers: tuple[str, str]) -> JsonAnswer:
    body = json.dumps(what, separators=(",", ":")).encode() + b"\n"
    return JsonAnswer(
        status, str(status), "", "", body=body, headers=(("Cache-Control", "no-store"), *headers)
    )


def _cookies(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        if name.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, val = part.strip().partition("=")
            if key and val and key not in out:
                out[key] = val
    return out


def _form(body: bytes) -> dict[str, str]:
    try:
        return _fields(body.decode("utf-8"))
    except UnicodeDecodeError:
        return {}


def _fields(text: str) -> dict[str, str]:
    """A query or form's fields; garbage (or more fields than any form of ours has) is none."""
    try:
        return dict(parse_qsl(text, max_num_fields=16))
    except ValueError:
        return {}


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body><main>{body}</main></body></html>"
    ).encode()


def _message(title: str, text: str) -> bytes:
    """A one-paragraph page (signed out, a refused login)."""
    return _page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>")


class LoginFlow:
    """Answers :class:`FlowRequest` s for one edge process (:attr:`AccessGate.login_flow`)."""

    def __init__(
        self,
        gate: AccessGate,
        store: AccessStore,
        *,
        country_of: Callable[[str], str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gate = gate
        self._store = store
        self._country_of = country_of
        #: Wall-clock seconds: the expiries of logins in progress are shared between processes.
        self._clock = clock
        self._state = LoginState(store.db)
        # One key for every process on this store: a form served by one is posted to another.
        self._csrf_key = self._state.shared_key("csrf")
        #: idp id → (its settings, its client): a changed provider gets a new client.
        self._oidc: dict[str, tuple[OidcSettings, OidcClient]] = {}
        self._cert_sign = CertSigner(gate, store, country_of=country_of)

    async def __call__(self, request: FlowRequest, method: str, body: bytes) -> ErrorPage:
        try:
            return await self._answer(request, method, body)
        except Exception:
            log.exception("access: the login flow failed for %s ray=%s", request.host, request.ray)
            return _html(
                500,
                _message(
                    "Sign-in failed",
                    f"The edge could not complete this step (Ray ID {request.ray}). Try again.",
                ),
            )

    async def _answer(self, request: FlowRequest, method: str, body: bytes) -> ErrorPage:
        parts = urlsplit(request.path)
        path = parts.path
        query = _fields(parts.query)
        cookies = _cookies(request.headers)
        if method == "POST" and path == CERT_SIGN:
            return await self._cert_sign(request, body)  # a token in the body, no cookies
        if method in ("GET", "HEAD"):
            if path in (LOGIN, f"{LOGIN}/{request.host}"):
                return self._login_page(request, query, cookies)
            if path == CALLBACK:
                return await self._callback(request, query, cookies)
            if path == PREFIX + "/logout":
                return await self._logout(request, query)
            if path == PREFIX + "/get-identity":
                return self._identity(request, cookies)
            if path == PREFIX + "/cli":
                return self._cli(request, query, cookies)
            if path.startswith(PREFIX + "/transfer/"):
                return await self._transfer(path.removeprefix(PREFIX + "/transfer/"))
        elif method == "POST" and path in _FORMS:
            form = _form(body)
            if not csrf_valid(self._csrf_key, cookies.get(LOGIN_COOKIE), form.get("csrf")):
                log.info("access: a login form without this browser's token refused (CSRF)")
                return _html(
                    403,
                    _message(
                        "Sign-in refused",
                        "This form was not sent from this browser's sign-in page. "
                        "Open the application again to sign in.",
                    ),
                )
            if path == PREFIX + "/cli":
                return await self._cli_allow(request, form, cookies)
            back = safe_return_path(form.get("return_to"))
            app = self._application(request, back)
            idp = self._provider(app, form.get("provider", ""))
            if idp is None:
                return self._login_page(
                    request, {"redirect_url": back}, cookies, "Choose a way to sign in."
                )
            if path == LOGIN + "/start" and idp.type == "oidc":
                return await self._start(request, app, idp, back)
            if path == LOGIN + "/pin" and idp.type == "onetimepin":
                return await self._pin_mail(request, app, idp, form, back, cookies)
            if path == LOGIN + "/pin/verify" and idp.type == "onetimepin":
                return await self._pin_verify(request, app, idp, form, back, cookies)
        return _html(404, _message("Not found", "There is no such Access page."))

    # -- which application, which providers -------------------------------------------------

    def _application(self, request: FlowRequest, back: str, kid: str | None = None) -> Application:
        """The application guarding the return path on this host (else the one ``kid``
        names, else the request's own)."""
        table = self._store.table()
        app = table.application(request.host, urlsplit(back).path or "/")
        if app is not None:
            return app
        for candidate in table.apps.get(request.host, ()):
            if kid and candidate.aud == kid:
                return candidate
        assert request.app is not None
        return request.app

    def _providers(self, app: Application) -> list[IdentityProvider]:
        idps = self._store.idps(app.account)
        if app.allowed_idps:
            return [i for i in idps if i.id in app.allowed_idps]
        return idps  # none named: every provider of the account (Cloudflare's default)

    def _provider(self, app: Application, idp_id: str) -> IdentityProvider | None:
        return next((i for i in self._providers(app) if i.id == idp_id), None)

    def _secure(self, request: FlowRequest) -> bool:
        return request.scheme == "https"

    def _login_page(
        self,
        request: FlowRequest,
        query: dict[str, str],
        cookies: dict[str, str],
        error: str | None = None,
    ) -> HtmlAnswer:
        back = safe_return_path(query.get("redirect_url"))
        app = self._application(request, back, query.get("kid"))
        if error is None and self._gate.request_session(app, request.headers) is not None:
            return _redirect(back)  # signed in already (another tab finished first)
        binding = cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        choices = [ProviderChoice(i.id, i.name, i.type) for i in self._providers(app)]
        page = login_page(
            app.name,
            choices,
            return_to=back,
            csrf=csrf_token(self._csrf_key, binding),
            error=error,
        )
        cookie = cookie_header(
            LOGIN_COOKIE, binding, path=PREFIX + "/", secure=self._secure(request)
        )
        return _html(200 if error is None else 400, page, ("Set-Cookie", cookie))

    # -- OIDC ----------------------------------------------------------------------------------

    def _client(self, idp: IdentityProvider) -> OidcClient:
        config = idp.config
        scopes = config.get("scopes") or ["openid", "email", "profile"]
        settings = OidcSettings(
            discovery_url=str(config["discovery_url"]),
            client_id=str(config["client_id"]),
            client_secret=idp.secrets.get("client_secret", ""),
            scopes=tuple(str(s) for s in scopes),
            email_claim=str(config.get("email_claim_name") or "email"),
            groups_claim=str(config.get("groups_claim_name") or "groups"),
            ca_pem=str(config["ca_pem"]) if config.get("ca_pem") else None,
        )
        known = self._oidc.get(idp.id)
        if known is not None and known[0] == settings:
            return known[1]
        client = OidcClient(settings)
        self._oidc[idp.id] = (settings, client)
        return client

    async def _start(
        self, request: FlowRequest, app: Application, idp: IdentityProvider, back: str
    ) -> ErrorPage:
        client = self._client(idp)
        redirect_uri = f"{request.scheme}://{request.authority}{CALLBACK}"
        try:
            # Discovery first: a provider that cannot be reached leaves no flow behind.
            await client.metadata()
            flow_id, flow = await self._store.db.off_loop(
                self._state.begin_flow, idp.id, redirect_uri, back, self._clock()
            )
            url = await client.authorize(flow)
        except OidcError as exc:
            log.warning("access: identity provider %r unavailable: %s", idp.name, exc)
            return self._login_page(
                request,
                {"redirect_url": back},
                {},
                f"{idp.name} cannot be reached right now. Try again in a moment.",
            )
        cookie = cookie_header(
            FLOW_COOKIE,
            f"{idp.id}.{flow_id}",
            path=CALLBACK,
            max_age=_FLOW_MAX_AGE,
            secure=self._secure(request),
        )
        return _redirect(url, ("Set-Cookie", cookie))

    async def _callback(
        self, request: FlowRequest, query: dict[str, str], cookies: dict[str, str]
    ) -> ErrorPage:
        _, _, flow_id = cookies.get(FLOW_COOKIE, "").rpartition(".")
        clear = (
            "Set-Cookie",
            cookie_header(FLOW_COOKIE, "", path=CALLBACK, max_age=0, secure=self._secure(request)),
        )
        if not flow_id:
            log.info("access: a callback with no login in progress refused on %s", request.host)
            return self._refused(request, "no sign-in was started in this browser", clear)
        try:
            # Taken from the store (by whichever process the provider sent the browser to),
            # at most once: a replayed callback finds nothing.
            idp_id, flow = await self._store.db.off_loop(
                self._state.take_flow, flow_id, query.get("state"), self._clock()
            )
        except FlowRefused as exc:
            log.info("access: OIDC login refused on %s: %s", request.host, exc)
            return self._refused(request, str(exc), clear)
        back = safe_return_path(flow.return_to)
        app = self._application(request, back)
        idp = self._provider(app, idp_id)
        if idp is None or idp.type != "oidc":
            return self._refused(request, "this application does not use that provider", clear)
        client = self._client(idp)
        try:
            identity = await client.complete(flow, query)
        except OidcError as exc:
            log.info("access: OIDC login refused on %s: %s", request.host, exc)
            return self._refused(request, str(exc), clear)
        groups_claim = client.settings.groups_claim
        custom = {groups_claim: list(identity.groups)} if identity.groups else {}
        return self._decide(request, app, idp, identity.email, custom, back, clear)

    def _refused(self, request: FlowRequest, why: str, *headers: tuple[str, str]) -> HtmlAnswer:
        return _html(
            403,
            _message(
                "Sign-in refused",
                f"The sign-in could not be completed: {why}. Open the application again to "
                f"start over (Ray ID {request.ray}).",
            ),
            *headers,
        )

    # -- one-time PIN --------------------------------------------------------------------------

    async def _pin_mail(
        self,
        request: FlowRequest,
        app: Application,
        idp: IdentityProvider,
        form: dict[str, str],
        back: str,
        cookies: dict[str, str],
    ) -> ErrorPage:
        email = form.get("email", "").strip().lower()
        if "@" not in email or len(email) > 254:
            return self._login_page(
                request, {"redirect_url": back}, cookies, "Enter your e-mail address."
            )
        config = idp.config
        if not config.get("smtp_host"):
            return self._login_page(
                request, {"redirect_url": back}, cookies, f"{idp.name} has no mail server set up."
            )
        try:
            pin = await self._store.db.off_loop(self._state.issue_pin, idp.id, email, self._clock())
        except PinLocked as exc:
            return self._login_page(request, {"redirect_url": back}, cookies, str(exc))
        mailer = PinMailer(
            SmtpSettings(
                host=str(config["smtp_host"]),
                port=int(config.get("smtp_port") or 587),
                sender=str(config["smtp_from"]),
                starttls=bool(config.get("smtp_starttls", True)),
                username=config.get("smtp_username") or None,
                password=idp.secrets.get("smtp_password"),
            )
        )
        try:
            await mailer.send(email, pin, app.name)
        except OSError as exc:
            log.warning("access: PIN mail for %s not sent: %s", app.domain, exc)
            return self._login_page(
                request,
                {"redirect_url": back},
                cookies,
                "The code could not be sent. Try again in a moment.",
            )
        csrf = csrf_token(self._csrf_key, cookies.get(LOGIN_COOKIE, ""))
        page = pin_entry_page(app.name, provider=idp.id, email=email, return_to=back, csrf=csrf)
        return _html(200, page)

    async def _pin_verify(
        self,
        request: FlowRequest,
        app: Application,
        idp: IdentityProvider,
        form: dict[str, str],
        back: str,
        cookies: dict[str, str],
    ) -> ErrorPage:
        email = form.get("email", "").strip().lower()
        result = await self._store.db.off_loop(
            self._state.check_pin, idp.id, email, form.get("pin", ""), self._clock()
        )
        if result is PinResult.ACCEPTED:
            return self._decide(request, app, idp, email, {}, back)
        log.info("access: PIN for %s on %s: %s", email, app.domain, result.value)
        errors = {
            PinResult.WRONG: "That code is not right. Check the mail and try again.",
            PinResult.LOCKED: "Too many wrong codes. Ask for a new one in a few minutes.",
            PinResult.EXPIRED: "That code has expired. Ask for a new one.",
            PinResult.UNKNOWN: "No code is waiting for this address. Ask for a new one.",
        }
        csrf = csrf_token(self._csrf_key, cookies.get(LOGIN_COOKIE, ""))
        page = pin_entry_page(
            app.name,
            provider=idp.id,
            email=email,
            return_to=back,
            csrf=csrf,
            error=errors[result],
        )
        return _html(403 if result is PinResult.LOCKED else 401, page)

    # -- the decision ----------------------------------------------------------------------------

    def _decide(
        self,
        request: FlowRequest,
        app: Application,
        idp: IdentityProvider,
        email: str,
        custom: dict[str, list[str]],
        back: str,
        *headers: tuple[str, str],
    ) -> ErrorPage:
        country = self._country_of(request.client_ip) if self._country_of is not None else None
        subject = Subject(
            email=email,
            claims={k: tuple(v) for k, v in custom.items()},
            country=country,
            client_ip=request.client_ip,
        )
        table = self._store.table()
        decision = evaluate(table.policies.get(app.id, ()), subject)
        idp_claim = {"id": idp.id, "type": idp.type}
        self._gate.record(app, subject, {"idp": idp_claim}, decision, request.ray)
        if not decision.admitted:
            page = denied_page(app.name, email=email, ray_id=request.ray)
            return _html(403, page, *headers)
        token = self._gate.mint_session(
            app,
            email=email,
            sub=str(uuid.uuid5(_USER_NAMESPACE, f"{app.account}\0{email}")),
            country=country,
            custom=custom or None,
            idp=idp_claim,
        )
        session = cookie_header(
            COOKIE,
            token,
            path=cookie_path(app.path),
            max_age=app.session_duration,
            secure=self._secure(request),
        )
        return _redirect(back, *headers, ("Set-Cookie", session))

    # -- after login ---------------------------------------------------------------------------

    async def _logout(self, request: FlowRequest, query: dict[str, str]) -> ErrorPage:
        assert request.app is not None
        table = self._store.table()
        apps = table.apps.get(request.host, ())
        for app in apps:
            found = self._gate.request_session(app, request.headers)
            if found is None:
                continue
            claims = found[1]
            # At once in this process; through the store for the others (and restarts).
            self._gate.revoke(claims)
            nonce = claims.get("identity_nonce")
            if isinstance(nonce, str) and nonce:
                expires = float(claims.get("exp", 0))
                await self._store.db.off_loop(
                    self._store.revoke_session, app.account, nonce, expires
                )
        # The cookies this request could carry go: the host's root one and, under a path
        # application's path, that application's.
        secure = self._secure(request)
        clear = [
            ("Set-Cookie", cookie_header(COOKIE, "", path=p, max_age=0, secure=secure))
            for p in sorted({"/", cookie_path(request.mount)})
        ]
        # A path application's cookie is sent only under its path, so the sign-out visits each
        # one's (a chain of redirects, one per path application, ``step`` counting): every
        # session on the host ends, in the store too, not only those this request carried.
        mounts = sorted({a.path for a in apps if a.path})
        step = query.get("step", "0")
        at = int(step) if step.isdigit() and len(step) < 4 else 0
        if at < len(mounts):
            return _redirect(f"{mounts[at]}{PREFIX}/logout?step={at + 1}", *clear)
        page = _message(
            "Signed out",
            f"You are signed out of {request.app.name}. Open the application again to sign in.",
        )
        return _html(200, page, *clear)

    def _identity(self, request: FlowRequest, cookies: dict[str, str]) -> ErrorPage:
        assert request.app is not None
        claims = None
        for app in self._store.table().apps.get(request.host, ()):
            found = self._gate.request_session(app, request.headers)
            if found is not None:
                claims = found[1]
                break
        if claims is None:
            return _json(401, {"err": "no valid session: sign in first"})
        raw = claims.get("custom")
        custom: dict[str, Any] = raw if isinstance(raw, dict) else {}
        groups = sorted({g for values in custom.values() for g in values})
        identity = {
            "id": claims.get("identity_nonce", ""),
            "name": "",
            "email": claims.get("email", ""),
            "user_uuid": claims.get("sub", ""),
            "idp": claims.get("idp") or {},
            "geo": {"country": claims.get("country", "")},
            "groups": [{"id": g, "name": g} for g in groups],
            "custom": custom,
            "iat": claims.get("iat"),
            "ip": request.client_ip,
            "account_id": "",
        }
        return _json(200, identity)

    # -- adit access login ---------------------------------------------------------------------

    def _cli(
        self, request: FlowRequest, query: dict[str, str], cookies: dict[str, str]
    ) -> ErrorPage:
        """Ask this browser, once it has a session, whether the CLI showing this key may have
        its token (without a session: log in first and come back). A question, not an
        automatic hand-over: a page of another site could send a signed-in browser here with
        its own key, and would then fetch the victim's token."""
        try:
            parse_public_key(query.get("token", ""))
        except TransferError:
            return _html(400, _message("Not a CLI login", "This link is missing its key."))
        back = safe_return_path(query.get("redirect_url"))
        app = self._application(request, back)
        if app.path and request.mount != app.path:
            # A path application's cookie is sent only under its path: ask there.
            return _redirect(app.path + request.path)
        if self._gate.request_session(app, request.headers) is None:
            here = safe_return_path(request.mount + request.path)
            login = f"{LOGIN}/{request.host}?kid={app.aud}&redirect_url={quote(here, safe='')}"
            return _redirect(login)
        binding = cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        key = query["token"]
        page = _page(
            f"Command line login · {app.name}",
            f"<h1>Sign the command line in to {html.escape(app.name)}?</h1>"
            "<p>A terminal running <code>adit access login</code> asks for your token. Allow it"
            " only if you started that command just now and it shows this key:</p>"
            f"<p><code>{html.escape(key[:12])}</code></p>"
            f'<form method="post" action="{request.mount}{PREFIX}/cli">'
            f'<input type="hidden" name="token" value="{html.escape(key)}">'
            f'<input type="hidden" name="redirect_url" value="{html.escape(back)}">'
            f'<input type="hidden" name="csrf" value="{csrf_token(self._csrf_key, binding)}">'
            '<button type="submit">Allow the command line</button></form>',
        )
        cookie = cookie_header(
            LOGIN_COOKIE, binding, path=request.mount + PREFIX + "/", secure=self._secure(request)
        )
        return _html(200, page, ("Set-Cookie", cookie))

    async def _cli_allow(
        self, request: FlowRequest, form: dict[str, str], cookies: dict[str, str]
    ) -> ErrorPage:
        """The browser said yes: seal its token to the CLI's key, for one fetch."""
        try:
            client_key = parse_public_key(form.get("token", ""))
        except TransferError:
            return _html(400, _message("Not a CLI login", "This form is missing its key."))
        app = self._application(request, safe_return_path(form.get("redirect_url")))
        found = self._gate.request_session(app, request.headers)
        if found is None:
            return self._refused(request, "this browser is not signed in")
        token = found[0]
        sealed = seal(client_key, token)
        try:
            await self._store.db.off_loop(
                self._state.put_transfer, form["token"], sealed, self._clock()
            )
        except TransfersFull:
            return _html(503, _message("Busy", "Too many logins are waiting. Try again soon."))
        return _html(
            200,
            _message(
                "Signed in",
                f"The command line now has your token for {app.name}. You can close this tab.",
            ),
        )

    async def _transfer(self, key: str) -> ErrorPage:
        sealed = await self._store.db.off_loop(self._state.claim_transfer, key, self._clock())
        if sealed is None:
            return _json(404, {"err": "no token for this key (yet)"})
        return JsonAnswer(200, "200", "", "", body=sealed, headers=(("Cache-Control", "no-store"),))
