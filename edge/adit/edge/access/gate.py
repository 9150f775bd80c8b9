"""Access at the public listener's seam: for one request, admit it (with the headers the origin
is to get), answer it (login, 401, 403, the key set), or let it pass (no application guards
its hostname).

Every application's session is its own, also for applications on paths of one hostname
(``app.example.com/`` and ``app.example.com/admin``): the login flow scopes each one's
``CF_Authorization`` cookie to its path (Cloudflare's "path cookie attribute", always on), so
the browser keeps one cookie per application and sends a path application's first; the gate
takes, of all the cookies a request carries, the one whose ``aud`` is the application's, and
a token of another application is never a session here. The flow's paths are also served
under a path application's own path (``/admin/cdn-cgi/access/logout``), where its cookie is
sent (:mod:`adit.edge.access.app_cookies`).

The costs sit where Cloudflare's do: a session token (the ``CF_Authorization`` cookie or the
``cf-access-token`` header) is verified once and then remembered until it expires, and the
``Cf-Access-Jwt-Assertion`` for a service token is signed once per token and application and
reused until shortly before it expires, so a request that passes Access costs dictionary
lookups and the policy evaluation (a few comparisons), not an RSA operation.

Service-token secrets are compared as SHA-256 digests with :func:`hmac.compare_digest`; a
token of another account, expired or deleted (revoked) counts as no token at all.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from adit.edge.access.app_cookies import CookieMemo, session_tokens, token_claims_aud
from adit.edge.access.decisions import DecisionLog, Entry
from adit.edge.access.engine import Decision, Subject, evaluate
from adit.edge.access.jwt_keys import InvalidToken, SigningKey, key_set, verify
from adit.edge.access.model import Application, ServiceToken
from adit.edge.access.pages import (
    denied,
    key_set_answer,
    login_redirect,
    login_unavailable,
    unauthenticated,
    wants_html,
)
from adit.edge.access.store import AccessStore, AccessTable, secret_digest
from adit.edge.pages import ErrorPage
from adit.protocol.headers import serialized_pair

ACCESS_FAILED = ErrorPage(
    500,
    "500",
    "Access could not check this request",
    "The edge could not decide whether this request may pass, so it did not forward it. "
    "Retrying usually works; the edge's operator finds the cause in its log under the Ray ID.",
)

FLOW_BODY_TOO_LARGE = ErrorPage(
    413,
    "413",
    "The form is too large",
    "A sign-in form is a few fields; this one was larger than the edge reads. Go back and "
    "send it again.",
)
#: The most of a request body the login flow reads (its forms are a few short fields).
MAX_FLOW_BODY: Final = 16 * 1024

__all__ = [
    "FLOW_BODY_TOO_LARGE",
    "MAX_FLOW_BODY",
    "AccessGate",
    "Admitted",
    "FlowRequest",
    "login_page",
]

log = logging.getLogger("adit.edge.access")

CERTS_PATH: Final = "/cdn-cgi/access/certs"
#: Where cloudflared's ``access ssh-gen`` asks the token's issuer (the team domain) for an
#: SSH certificate (:mod:`adit.edge.access.cert_sign`).
CERT_SIGN_PATH: Final = "/cdn-cgi/access/cert_sign"
#: The login flow's own paths on a guarded hostname (never forwarded to the origin).
_ACCESS_PATHS: Final = "/cdn-cgi/access/"
ASSERTION: Final = "Cf-Access-Jwt-Assertion"
USER_EMAIL: Final = "Cf-Access-Authenticated-User-Email"
#: Verified sessions and minted service-token assertions kept; beyond, the memory is cleared.
_CACHE_ENTRIES: Final = 50_000
#: A session's remembered allows (one per client address it came from, per store version).
_ALLOWS_PER_SESSION: Final = 16
#: A minted assertion is reused until this close to its expiry.
_REMINT_MARGIN: Final = 60.0


@dataclass(frozen=True, slots=True)
class FlowRequest(ErrorPage):
    """A request for the login flow's paths (``/cdn-cgi/access/...`` but the key set) on a
    guarded hostname: the listener reads its body (bounded) and awaits
    :meth:`AccessGate.answer_flow` for the page. Never forwarded.

    An :class:`ErrorPage` (a 500) so that a listener that does not know it answers it as a
    failure rather than forwarding anything."""

    app: Application | None = None
    host: str = ""
    #: The request target (path and query).
    path: str = ""
    headers: Sequence[tuple[bytes, bytes]] = ()
    #: The visitor's address (after ``--trusted-proxies``).
    client_ip: str = ""
    ray: str = ""
    #: Filled in by the listener: the visitor's authority (host[:port]) and scheme.
    authority: str = ""
    scheme: str = "https"
    #: The application path the flow's path was asked under ("" at the host's root): there
    #: the browser sends that application's own cookie.
    mount: str = ""

    def at(self, authority: str, scheme: str) -> FlowRequest:
        return replace(self, authority=authority, scheme=scheme)


#: Answers a :class:`FlowRequest`: (request, method, body) → the page.
LoginFlowHandler = Callable[[FlowRequest, str, bytes], Awaitable[ErrorPage]]


async def login_page(request: FlowRequest, method: str, body: bytes) -> ErrorPage:
    """The stand-in: 501, sign-in is not available on this edge."""
    return login_unavailable(request.host, request.path)


@dataclass(frozen=True, slots=True)
class Admitted:
    """Access let the request through: these headers go to the origin with it.

    ``encoded``: the same headers as the tunnel's serialised request headers code them. An
    admission is remembered for its session's next requests, and its assertion is near a
    kilobyte: coded once here, not on every request (it lives exactly as long as the token
    it codes, which the session holds anyway).
    """

    headers: tuple[tuple[str, str], ...]
    encoded: dict[tuple[str, str], bytes] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        pieces = {pair: serialized_pair(*pair) for pair in self.headers}
        object.__setattr__(self, "encoded", pieces)


@dataclass(slots=True)
class _Session:
    claims: dict[str, Any]
    expires: float
    aud: str
    #: Its first decision is in the access log (later allows of one session are not).
    logged: bool = False
    #: Allows already decided for it: (store version, application, client address) → the
    #: verdict. The policies decide on the token's claims, the address and its country, all
    #: fixed for that key; a changed store is a new version. Dropped with the session
    #: (expiry, logout), so a later request never outlives its session's end.
    allowed: dict[tuple[int, str, str], Admitted] = field(default_factory=dict)


@dataclass(slots=True)
class _Remembered:
    """A connection's last allow, and all it was decided on (see :class:`ConnectionMemo`)."""

    cookie: bytes
    table: AccessTable
    app: Application
    host: str
    #: ``app`` is the host's one application and covers all of its paths.
    whole_host: bool
    client_ip: str
    generation: int
    expires: float
    admitted: Admitted


class ConnectionMemo:
    """What Access remembers for one visitor connection: the tokens of its cookie headers
    (:func:`session_tokens`) and its last allow.

    A browser sends the same cookie with each request of a keep-alive connection. The next
    request to the same application, from the same address, with the very same cookie header
    and no other credential, is the same decision while the store (policies, keys, sign-outs
    at other processes), the session's life and this process's sign-outs are unchanged: it is
    taken again without reading the cookie, the session or the policies."""

    __slots__ = ("last", "tokens")

    def __init__(self) -> None:
        self.tokens: CookieMemo = {}
        self.last: _Remembered | None = None


_OTHER_CREDENTIALS: Final = frozenset((b"cf-access-token", b"cf-access-client-id"))
_OTHER_CREDENTIAL_LENGTHS: Final = frozenset(len(name) for name in _OTHER_CREDENTIALS)


def _sole_cookie(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The request's one cookie header, when it carries no other credential (the header
    token, a service token) and no second cookie header; else None."""
    cookie = None
    for raw, value in headers:
        size = len(raw)
        if size == 6:
            if raw.lower() == b"cookie":
                if cookie is not None:
                    return None
                cookie = value
        elif size in _OTHER_CREDENTIAL_LENGTHS and raw.lower() in _OTHER_CREDENTIALS:
            return None
    return cookie


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for raw, value in headers:
        if len(raw) == len(name) and raw.lower() == name:
            return value.decode("latin-1").strip()
    return None


class AccessGate:
    """Decides for the public listener; one per edge process."""

    def __init__(
        self,
        store: AccessStore,
        decisions: DecisionLog,
        *,
        clock: Callable[[], float] = time.time,
        country_of: Callable[[str], str | None] | None = None,
        client_address: Callable[[str, Sequence[tuple[bytes, bytes]]], str] | None = None,
    ) -> None:
        self._store = store
        self.decisions = decisions
        self._clock = clock
        #: The visitor's country from their address (a GeoIP database), or None.
        self.country_of = country_of
        #: The visitor's address from the connection's and the headers (``--trusted-proxies``).
        self.client_address = client_address
        #: Serves the login flow's paths (``/cdn-cgi/access/login``, ``logout``...).
        self.login_flow: LoginFlowHandler = login_page
        self._sessions: dict[str, _Session] = {}
        #: Ended sessions (logout): identity_nonce → the token's expiry (kept until then).
        self._revoked: dict[str, float] = {}
        self._rotating: set[str] = set()
        self._minted: dict[tuple[str, str, int], tuple[str, float]] = {}
        #: Counts this process's sign-outs: a connection's remembered allow is of one count.
        self._generation = 0

    def guards(self, host: str) -> bool:
        """Whether ``host`` has an application or is a team domain."""
        table = self._store.table()
        return host in table.apps or host in table.team_hosts

    def check(
        self,
        host: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        client_ip: str,
        ray: str,
        *,
        log_refusal: bool = True,
        memo: ConnectionMemo | None = None,
    ) -> Admitted | ErrorPage | None:
        """The verdict for a request to ``host`` ``path`` (None: no application guards it).

        ``log_refusal=False``: a refusal is not logged (the caller asks again, and answers,
        elsewhere: HTTP/1.1's fast path hands refusals to its task). ``memo``: what is
        remembered for the visitor's connection (:class:`ConnectionMemo`).

        Never raises: a failure to decide (a bug, a store that cannot be read) refuses the
        request with a 500 page (fail closed) and is logged with the Ray ID."""
        try:
            return self._check(host, path, headers, client_ip, ray, log_refusal, memo)
        except Exception:
            log.exception("access: no decision for %s ray=%s", host, ray)
            return ACCESS_FAILED

    def _check(
        self,
        host: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        client_ip: str,
        ray: str,
        log_refusal: bool,
        memo: ConnectionMemo | None = None,
    ) -> Admitted | ErrorPage | None:
        table = self._store.table()
        last = memo.last if memo is not None else None
        if (
            last is not None
            and last.table is table
            and last.host == host
            and last.whole_host
            and not path.startswith(_ACCESS_PATHS)
        ):
            # The host of the connection's last allow, in the same table, and not a path of
            # the flow or the key set: the application is that one, as resolved below.
            app = last.app
        else:
            resolved = self._resolve(table, host, path, headers, client_ip, ray)
            if not isinstance(resolved, Application):
                return resolved
            app = resolved
        if self.client_address is not None:
            client_ip = self.client_address(client_ip, headers)
        return self._decide(table, app, host, path, headers, client_ip, ray, log_refusal, memo)

    def _resolve(
        self,
        table: AccessTable,
        host: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        client_ip: str,
        ray: str,
    ) -> Application | ErrorPage | None:
        """The application that decides on ``host`` ``path``, or the edge's own answer (the
        key set, the login flow), or None (no application guards it)."""
        if not table.apps and not table.team_hosts:
            return None
        if path == CERTS_PATH or path.startswith(CERTS_PATH + "?"):
            account = table.team_hosts.get(host) or table.accounts_by_host.get(host)
            if account is not None:
                return key_set_answer(key_set(self._keys(table, account)))
        if path == CERT_SIGN_PATH and host in table.team_hosts:
            return self._flow(None, host, path, headers, client_ip, ray, "")
        app = table.application(host, path)
        mount = ""
        if app is not None and app.path and path.startswith(app.path + _ACCESS_PATHS):
            # The flow under a path application's own path (its cookie is sent only there).
            mount, path = app.path, path[len(app.path) :]
        if app is None and path.startswith(_ACCESS_PATHS):
            # An application for a path of the host: the flow's paths are its too.
            app = next(iter(table.apps.get(host, ())), None)
        if app is None:
            return None
        if path.startswith(_ACCESS_PATHS):
            return self._flow(app, host, path, headers, client_ip, ray, mount)
        return app

    def _flow(
        self,
        app: Application | None,
        host: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        client_ip: str,
        ray: str,
        mount: str,
    ) -> FlowRequest:
        if self.client_address is not None:
            client_ip = self.client_address(client_ip, headers)
        return FlowRequest(
            500,
            "500",
            "Access could not answer this request",
            "This edge cannot serve the sign-in pages on this connection.",
            app=app,
            host=host,
            path=path,
            headers=headers,
            client_ip=client_ip,
            ray=ray,
            mount=mount,
        )

    # -- the decision ----------------------------------------------------------------------

    def _decide(
        self,
        table: AccessTable,
        app: Application,
        host: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        client_ip: str,
        ray: str,
        log_refusal: bool,
        memo: ConnectionMemo | None,
    ) -> Admitted | ErrorPage:
        now = self._clock()
        cookie = None
        if memo is not None:
            cookie = _sole_cookie(headers)
            last = memo.last
            if (
                last is not None
                and cookie is not None
                and last.table is table
                and last.app is app
                and last.generation == self._generation
                and now < last.expires
                and last.client_ip == client_ip
                and last.cookie == cookie
            ):
                return last.admitted
        token, session = self._app_session(
            table, app, headers, now, memo.tokens if memo is not None else None
        )
        service = self._service_token(table, app, headers, now)
        if session is not None and service is None:
            # The session's next request from the same address: decided already.
            known = session.allowed.get((table.version, app.id, client_ip))
            if known is not None:
                if memo is not None and cookie is not None:
                    memo.last = self._remembered(
                        cookie, table, app, host, client_ip, session, known
                    )
                return known
        claims = session.claims if session is not None else {}
        if self.country_of is not None:
            # The request's own address decides (a visitor who moved is where they are now;
            # an address the database does not know has no country).
            country = self.country_of(client_ip)
        else:
            country = claims.get("country") or None  # where the visitor logged in
        groups = claims.get("custom") or {}
        subject = Subject(
            email=claims.get("email") or None,
            claims={k: tuple(v) if isinstance(v, list) else (str(v),) for k, v in groups.items()}
            if isinstance(groups, dict)
            else {},
            country=country,
            client_ip=client_ip,
            service_token_id=service.id if service is not None else None,
        )
        decision = evaluate(table.policies.get(app.id, ()), subject)
        repeat = decision.action == "allow" and session is not None and session.logged
        if not repeat and (decision.admitted or log_refusal):
            identity = subject.email or (service.client_id if service is not None else "")
            self._log(app, subject, identity, claims, decision, ray)
            if session is not None:
                session.logged = True
        if decision.admitted:
            admitted = Admitted(self._origin_headers(table, app, decision, token, session, service))
            if decision.action == "allow" and session is not None and service is None:
                if len(session.allowed) >= _ALLOWS_PER_SESSION:
                    session.allowed.clear()
                session.allowed[(table.version, app.id, client_ip)] = admitted
                if memo is not None and cookie is not None:
                    memo.last = self._remembered(
                        cookie, table, app, host, client_ip, session, admitted
                    )
            return admitted
        browser = wants_html(_header(headers, b"accept") or "")
        if decision.action == "login":
            if browser:
                return login_redirect(host, path, app.name, app.aud)
            return unauthenticated(app.name)
        return denied(app.name, browser)

    def _remembered(
        self,
        cookie: bytes,
        table: AccessTable,
        app: Application,
        host: str,
        client_ip: str,
        session: _Session,
        admitted: Admitted,
    ) -> _Remembered:
        """A connection's allow, with what a later request must match to be given it."""
        whole_host = not app.path and table.apps.get(host, ()) == (app,)
        return _Remembered(
            cookie,
            table,
            app,
            host,
            whole_host,
            client_ip,
            self._generation,
            session.expires,
            admitted,
        )

    def _app_session(
        self,
        table: AccessTable,
        app: Application,
        headers: Sequence[tuple[bytes, bytes]],
        now: float,
        cookies: CookieMemo | None = None,
    ) -> tuple[str | None, _Session | None]:
        """The request's session for ``app`` and its token: the first of its
        ``CF_Authorization`` cookies (a browser sends one per application whose path covers
        the request) or ``cf-access-token`` header that is a live session of this
        application; a token for another application is skipped before any signature check."""
        for token in session_tokens(headers, cookies):
            if token not in self._sessions and app.aud not in token_claims_aud(token):
                continue
            session = self._session(table, app, token, now)
            if session is not None:
                return token, session
        return None, None

    def _session(
        self, table: AccessTable, app: Application, token: str, now: float
    ) -> _Session | None:
        """The claims of a session token for ``app``, verified once and remembered."""
        known = self._sessions.get(token)
        if known is not None:
            if table.revoked and known.claims.get("identity_nonce") in table.revoked:
                return None  # signed out at another edge process
            if known.expires > now and known.aud == app.aud:
                return known
            if known.expires <= now:
                del self._sessions[token]
            return None
        return self._verified(table, app, token)

    def _verified(self, table: AccessTable, app: Application, token: str) -> _Session | None:
        try:
            claims = verify(
                token,
                table.keys.get(app.account, ()),
                audience=app.aud,
                issuer=table.issuer(app.account),
            )
        except InvalidToken as exc:
            log.info("access: session token refused for %s: %s", app.domain, exc)
            return None
        nonce = claims.get("identity_nonce")
        if nonce in self._revoked or nonce in table.revoked:
            log.info("access: session token of a signed-out session refused for %s", app.domain)
            return None
        if len(self._sessions) >= _CACHE_ENTRIES:
            self._sessions.clear()
        session = _Session(claims, float(claims["exp"]), app.aud)
        self._sessions[token] = session
        return session

    def session_claims(self, app: Application, token: str | None) -> dict[str, Any] | None:
        """The claims of a live session token for ``app`` (get-identity, logout), or None."""
        if not token:
            return None
        session = self._session(self._store.table(), app, token, self._clock())
        return session.claims if session is not None else None

    def request_session(
        self, app: Application, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[str, dict[str, Any]] | None:
        """The token and claims of the request's session for ``app`` (of all the cookies it
        carries, the one for this application), or None."""
        token, session = self._app_session(self._store.table(), app, headers, self._clock())
        if token is None or session is None:
            return None
        return token, session.claims

    def revoke(self, claims: dict[str, Any]) -> None:
        """End a session: its token (and every copy of it) is refused from now on, by this
        edge process, until it would have expired anyway."""
        nonce = claims.get("identity_nonce")
        if not isinstance(nonce, str) or not nonce:
            return
        now = self._clock()
        for nonce_, expires in list(self._revoked.items()):
            if expires <= now:
                del self._revoked[nonce_]
        if len(self._revoked) >= _CACHE_ENTRIES:
            # Never forget a revocation early: refuse the new one's memory instead of an old.
            log.warning("access: too many signed-out sessions remembered; not revoking")
            return
        self._revoked[nonce] = float(claims.get("exp", now))
        self._generation += 1
        for token, session in list(self._sessions.items()):
            if session.claims.get("identity_nonce") == nonce:
                del self._sessions[token]

    def _service_token(
        self,
        table: AccessTable,
        app: Application,
        headers: Sequence[tuple[bytes, bytes]],
        now: float,
    ) -> ServiceToken | None:
        client_id = _header(headers, b"cf-access-client-id")
        if not client_id:
            return None  # the common case: one look at the headers, not two
        secret = _header(headers, b"cf-access-client-secret")
        if secret is None:
            return None
        token = table.tokens.get(client_id.lower())
        # Compared whatever the lookup found, so the time taken does not tell a known client
        # id from an unknown one.
        expected = token.secret_sha256 if token is not None else secrets.token_bytes(32)
        if not hmac.compare_digest(secret_digest(secret), expected) or token is None:
            log.info("access: service token refused for %s: unknown id or wrong secret", app.domain)
            return None
        if token.account != app.account:
            log.info("access: service token of another account refused for %s", app.domain)
            return None
        if datetime.datetime.fromisoformat(token.expires_at).timestamp() <= now:
            log.info("access: expired service token %s refused for %s", token.client_id, app.domain)
            return None
        return token

    # -- to the origin ---------------------------------------------------------------------

    def _origin_headers(
        self,
        table: AccessTable,
        app: Application,
        decision: Decision,
        token: str | None,
        session: _Session | None,
        service: ServiceToken | None,
    ) -> tuple[tuple[str, str], ...]:
        if decision.action == "bypass":
            return ()  # Cloudflare sends no assertion for a bypassed request
        if session is not None and token is not None:
            # The session's own token is the assertion (it is for this application).
            email = session.claims.get("email")
            return ((ASSERTION, token), *(((USER_EMAIL, email),) if email else ()))
        if service is not None:
            return ((ASSERTION, self._service_assertion(table, app, service)),)
        return ()

    def _service_assertion(self, table: AccessTable, app: Application, token: ServiceToken) -> str:
        key = self._current_key(table, app.account)
        cache_key = (token.id, app.id, id(key))
        now = self._clock()
        minted = self._minted.get(cache_key)
        if minted is not None and minted[1] - _REMINT_MARGIN > now:
            return minted[0]
        expires = min(
            now + app.session_duration,
            datetime.datetime.fromisoformat(token.expires_at).timestamp(),
        )
        claims = {
            "type": "app",
            "aud": [app.aud],
            "iss": table.issuer(app.account),
            "iat": int(now),
            "nbf": int(now),
            "exp": int(expires),
            "sub": "",
            "common_name": token.client_id,
            "identity_nonce": "",
        }
        signed = key.sign(claims)
        if len(self._minted) >= _CACHE_ENTRIES:
            self._minted.clear()
        self._minted[cache_key] = (signed, expires)
        return signed

    def mint_session(
        self,
        app: Application,
        *,
        email: str,
        sub: str,
        country: str | None = None,
        custom: dict[str, list[str]] | None = None,
        idp: dict[str, str] | None = None,
    ) -> str:
        """A session token for ``app`` (the ``CF_Authorization`` cookie's value and the
        origin's assertion): for the browser login flow, and for tests."""
        table = self._store.table()
        key = self._current_key(table, app.account)
        now = int(self._clock())
        claims: dict[str, Any] = {
            "type": "app",
            "aud": [app.aud],
            "email": email,
            "sub": sub,
            "iss": table.issuer(app.account),
            "iat": now,
            "nbf": now,
            "exp": now + app.session_duration,
            "identity_nonce": secrets.token_urlsafe(16),
            "country": country or "",
        }
        if custom:
            claims["custom"] = custom
        if idp:
            claims["idp"] = idp
        return key.sign(claims)

    def _current_key(self, table: AccessTable, account: str) -> SigningKey:
        keys = table.keys.get(account, ())
        if keys and not keys[0].retired:
            key = keys[0]
            if self._clock() - key.created_at >= table.rotation_interval(account):
                self._rotate_later(account)
            return key
        return self._store.ensure_key(account)

    def _rotate_later(self, account: str) -> None:
        """Rotate the account's key on the store's writer thread (once at a time); until the
        new key is in the table, the current one goes on signing."""
        if account in self._rotating:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tools, tests): the next signing on the edge rotates
        self._rotating.add(account)
        future = self._store.db.off_loop(self._store.rotate_keys, account)

        def done(finished: asyncio.Future[SigningKey]) -> None:
            self._rotating.discard(account)
            if finished.exception() is not None:
                log.warning("access: key rotation for %s failed: %s", account, finished.exception())
            else:
                log.info("access: signing key of %s rotated", account)

        future.add_done_callback(done)

    def _keys(self, table: AccessTable, account: str) -> tuple[SigningKey, ...]:
        keys = table.keys.get(account, ())
        if not keys:
            self._store.ensure_key(account)
            keys = self._store.table().keys.get(account, ())
        return keys

    def record(
        self,
        app: Application,
        subject: Subject,
        claims: dict[str, Any],
        decision: Decision,
        ray: str,
    ) -> None:
        """The login flow's decision, into the access log."""
        self._log(app, subject, subject.email or "", claims, decision, ray)

    def _log(
        self,
        app: Application,
        subject: Subject,
        identity: str,
        claims: dict[str, Any],
        decision: Decision,
        ray: str,
    ) -> None:
        self.decisions.record(
            Entry(
                account=app.account,
                at=self.decisions.now(),
                app_id=app.id,
                app_domain=app.domain + app.path,
                user_email=identity,
                idp=_idp_name(claims, subject),
                country=subject.country or "",
                ip=subject.client_ip,
                action=decision.action,
                allowed=decision.admitted,
                policy_id=decision.policy_id or "",
                ray_id=ray,
            )
        )


def _idp_name(claims: dict[str, Any], subject: Subject) -> str:
    idp = claims.get("idp")
    if isinstance(idp, dict):
        return str(idp.get("type", ""))
    if idp:
        return str(idp)
    return "service_token" if subject.service_token_id else ""
