"""Access's OpenID Connect login: the authorization code flow with PKCE (S256), state and nonce.

The flow has three steps, each a function or method here:

1. :meth:`OidcClient.begin` puts a :class:`PendingFlow` (state, nonce, PKCE verifier, where the
   visitor returns) in the :class:`FlowTable` under a random flow id, which the caller sets as
   an HttpOnly cookie, and returns the provider's authorization URL.
2. The provider sends the browser back with ``code`` and ``state``; :meth:`OidcClient.finish`
   takes the flow (by the cookie's id) out of the table, exchanges the code with the verifier,
   and validates the ID token.
3. :func:`identity_from_claims` maps the token's claims to (email, groups) by the provider's
   configured claim names.

Invariants:

- A flow is finished at most once: :meth:`FlowTable.take` removes the entry whatever the
  outcome, so a replayed callback (same state, same code) finds nothing and is refused.
- A callback is accepted only from the browser that began the flow: the flow id comes from
  that browser's cookie, and the ``state`` in the query must equal the flow's (compared in
  constant time). A forged state, or a login-CSRF callback carried into another browser, is
  refused.
- An ID token is accepted only when signed by a key of the provider's JWKS with an asymmetric
  algorithm the provider announces, with ``iss`` the discovered issuer, ``aud`` holding the
  client id (``azp`` the client id when there are several), ``nonce`` the flow's, and ``exp`` in
  the future. ``alg: none`` and HMAC algorithms are never accepted.

The table and the validation are sans-IO (time is a parameter); :class:`OidcClient` does the
HTTP (discovery, JWKS, code exchange) with bounded timeouts and caches what it fetched.
"""

from __future__ import annotations

import hmac
import json
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

if TYPE_CHECKING:
    import httpx


def _http_errors() -> type[Exception]:
    """httpx's base error. httpx is imported when a provider is first asked, not with this
    module: every `adit edge` command imports the store, which imports this module, and
    httpx costs a tenth of a second to import."""
    import httpx

    return httpx.HTTPError


__all__ = [
    "FLOW_LIFETIME",
    "FlowRefused",
    "FlowTable",
    "IdTokenRejected",
    "OidcClient",
    "OidcError",
    "OidcIdentity",
    "OidcSettings",
    "PendingFlow",
    "ProviderMetadata",
    "ProviderUnavailable",
    "authorization_url",
    "check_ca_pem",
    "identity_from_claims",
    "parse_metadata",
    "tls_context",
    "validate_id_token",
]

#: How long a visitor has between leaving for the provider and coming back (seconds).
FLOW_LIFETIME = 600.0
#: Flows kept at most: a flood of abandoned logins evicts the oldest instead of growing memory.
MAX_FLOWS = 10_000
#: Discovery and JWKS are fetched again after this long (seconds); an unknown ``kid`` refetches
#: the JWKS at once (at most every JWKS_MIN_REFRESH), so a provider's key rotation just works.
METADATA_TTL = 3600.0
JWKS_MIN_REFRESH = 60.0
#: Clock skew allowed on ``exp``/``iat`` (seconds).
LEEWAY = 60
#: Asymmetric signature algorithms only: HS* would let anyone holding the client secret (or a
#: public key misread as a secret) mint tokens; ``none`` is no signature at all.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: Bodies read from a provider at most (discovery, JWKS, token response).
MAX_BODY = 1 << 20


class OidcError(Exception):
    """A login through an OIDC provider failed; ``str()`` is safe to log (no secrets)."""

    #: Whether trying the same login again later may succeed.
    retryable = False


class FlowRefused(OidcError):
    """The callback matches no flow of this browser: unknown, expired, used, or forged state."""


class IdTokenRejected(OidcError):
    """The provider's answer did not carry an ID token that validates."""


class ProviderUnavailable(OidcError):
    """The provider could not be reached or answered with an error."""

    retryable = True


@dataclass(frozen=True, kw_only=True)
class OidcSettings:
    """One generic OIDC identity provider, as an operator configures it."""

    #: The issuer's ``.well-known/openid-configuration`` URL (or the issuer URL itself).
    discovery_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    #: Claim names mapped to the identity (Cloudflare's "OIDC claims" settings).
    email_claim: str = "email"
    groups_claim: str = "groups"
    #: A PEM bundle of CAs for the provider's TLS, as a file (None: the system's store).
    ca_bundle: str | None = None
    #: The same as PEM text (the provider's ``ca_pem`` setting): with either, the provider's
    #: certificate must chain to these CAs and to nothing else.
    ca_pem: str | None = None
    #: Seconds any one request to the provider may take.
    timeout: float = 10.0

    @property
    def well_known(self) -> str:
        url = self.discovery_url.rstrip("/")
        if url.endswith("/.well-known/openid-configuration"):
            return url
        return url + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class ProviderMetadata:
    """What discovery says of a provider (the parts the flow uses)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: frozenset[str]


@dataclass(frozen=True)
class PendingFlow:
    """One login between leaving for the provider and coming back."""

    state: str
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str
    #: The same-host path the visitor goes back to (validated by the caller).
    return_to: str
    expires_at: float


@dataclass(frozen=True)
class OidcIdentity:
    """Who logged in, as the ID token says."""

    email: str
    groups: tuple[str, ...]
    subject: str
    issuer: str


def _need_str(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ProviderUnavailable(f"{where}: no {key!r} in the provider's discovery document")
    return value


def parse_metadata(doc: object, settings: OidcSettings) -> ProviderMetadata:
    """Validate a discovery document: its issuer must be the one the URL names (OIDC
    Discovery §4.3), or a provider could hand out another issuer's tokens."""
    where = settings.well_known
    if not isinstance(doc, dict):
        raise ProviderUnavailable(f"{where}: the discovery document is not a JSON object")
    issuer = _need_str(doc, "issuer", where)
    if issuer.rstrip("/") + "/.well-known/openid-configuration" != where:
        raise ProviderUnavailable(f"{where}: the discovery document names issuer {issuer!r}")
    announced = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = frozenset(a for a in announced if isinstance(a, str)) & ALLOWED_ALGORITHMS
    if not algorithms:
        raise ProviderUnavailable(f"{where}: the provider signs ID tokens with no safe algorithm")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=_need_str(doc, "authorization_endpoint", where),
        token_endpoint=_need_str(doc, "token_endpoint", where),
        jwks_uri=_need_str(doc, "jwks_uri", where),
        algorithms=algorithms,
    )


class FlowTable:
    """Pending logins by flow id: bounded, expiring, each taken at most once."""

    def __init__(self, lifetime: float = FLOW_LIFETIME, limit: int = MAX_FLOWS) -> None:
        self._lifetime = lifetime
        self._limit = limit
        self._flows: OrderedDict[str, PendingFlow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flows)

    def begin(self, redirect_uri: str, return_to: str, now: float) -> tuple[str, PendingFlow]:
        """A new flow and its id (the HttpOnly cookie's value)."""
        self._expire(now)
        while len(self._flows) >= self._limit:
            self._flows.popitem(last=False)
        flow_id = secrets.token_urlsafe(32)
        flow = PendingFlow(
            state=generate_token(43),
            nonce=generate_token(43),
            # RFC 7636 §4.1: 43 to 128 characters of the unreserved set.
            code_verifier=generate_token(64),
            redirect_uri=redirect_uri,
            return_to=return_to,
            expires_at=now + self._lifetime,
        )
        self._flows[flow_id] = flow
        return flow_id, flow

    def take(self, flow_id: str | None, state: str | None, now: float) -> PendingFlow:
        """The flow ``flow_id`` names, removed from the table, if ``state`` is its own and it
        has not expired; otherwise :class:`FlowRefused`. Removed in every case, so a second
        callback for the same flow (a replayed code) is refused."""
        flow = self._flows.pop(flow_id, None) if flow_id else None
        if flow is None:
            raise FlowRefused("no login in progress for this browser (expired or already used)")
        if not state or not hmac.compare_digest(flow.state.encode(), state.encode()):
            raise FlowRefused("the provider's answer does not belong to this login (state)")
        if now >= flow.expires_at:
            raise FlowRefused("the login took too long; start again")
        return flow

    def _expire(self, now: float) -> None:
        while self._flows:
            oldest = next(iter(self._flows.values()))
            if oldest.expires_at > now:
                break
            self._flows.popitem(last=False)


def authorization_url(metadata: ProviderMetadata, settings: OidcSettings, flow: PendingFlow) -> str:
    """Where the browser goes to log in at the provider."""
    url: str = prepare_grant_uri(
        metadata.authorization_endpoint,
        settings.client_id,
        "code",
        redirect_uri=flow.redirect_uri,
        scope=" ".join(settings.scopes),
        state=flow.state,
        nonce=flow.nonce,
        code_challenge=create_s256_code_challenge(flow.code_verifier),
        code_challenge_method="S256",
    )
    return url


def validate_id_token(
    token: str,
    jwks: jwt.PyJWKSet,
    metadata: ProviderMetadata,
    settings: OidcSettings,
    nonce: str,
    now: float,
) -> dict[str, Any]:
    """The claims of ``token`` if it validates (see the module's invariants); ``now`` is wall
    clock time (seconds since the epoch)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise IdTokenRejected(f"the ID token is malformed: {exc}") from None
    alg = header.get("alg")
    if alg not in metadata.algorithms:
        raise IdTokenRejected(f"the ID token is signed with {alg!r}, which is not accepted")
    kid = header.get("kid")
    keys = [k for k in jwks.keys if kid is None or k.key_id == kid]
    if not keys:
        raise IdTokenRejected(f"the ID token's key {kid!r} is not in the provider's JWKS")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            keys[0].key,
            algorithms=[alg],
            audience=settings.client_id,
            issuer=metadata.issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise IdTokenRejected(f"the ID token does not validate: {exc}") from None
    # PyJWT checks exp against its own clock; the flow's clock is the one injected here.
    if float(claims["exp"]) + LEEWAY <= now:
        raise IdTokenRejected("the ID token has expired")
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != settings.client_id:
        raise IdTokenRejected("the ID token is for several audiences and not authorized to us")
    got = claims.get("nonce")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
        raise IdTokenRejected("the ID token's nonce is not this login's")
    return claims


def identity_from_claims(claims: Mapping[str, Any], settings: OidcSettings) -> OidcIdentity:
    """(email, groups) by the configured claim names; a login without an e-mail is refused,
    since every Access decision and the origin's JWT name one."""
    email = claims.get(settings.email_claim)
    if not isinstance(email, str) or "@" not in email:
        raise IdTokenRejected(f"the ID token has no e-mail in claim {settings.email_claim!r}")
    raw = claims.get(settings.groups_claim, ())
    if isinstance(raw, str):
        raw = [raw]
    groups = tuple(g for g in raw if isinstance(g, str)) if isinstance(raw, list | tuple) else ()
    return OidcIdentity(
        email=email.lower(),
        groups=groups,
        subject=str(claims.get("sub", "")),
        issuer=str(claims.get("iss", "")),
    )


class OidcClient:
    """One provider's discovery, JWKS and code exchange, over HTTP(S) with bounded timeouts.

    ``clock`` (monotonic) times the caches; ``wall`` (epoch seconds) checks the ID token."""

    def __init__(
        self,
        settings: OidcSettings,
        flows: FlowTable | None = None,
        *,
        clock: Any = time.monotonic,
        wall: Any = time.time,
    ) -> None:
        self.settings = settings
        self.flows = flows if flows is not None else FlowTable()
        self._clock = clock
        self._wall = wall
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_at = 0.0
        self._tls: ssl.SSLContext | None = None

    def _http(self) -> httpx.AsyncClient:
        import httpx

        if self._tls is None:
            # One context per client, built once: loading a CA store costs milliseconds.
            self._tls = tls_context(self.settings)
        return httpx.AsyncClient(
            verify=self._tls, timeout=self.settings.timeout, follow_redirects=False
        )

    async def _get_json(self, url: str) -> object:
        try:
            async with (
                self._http() as http,
                http.stream("GET", url, headers={"accept": "application/json"}) as response,
            ):
                status = response.status_code
                body = bytearray()
                # Read no more than MAX_BODY: a provider's answer never holds the edge's memory.
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise ProviderUnavailable(f"{url}: the answer is over {MAX_BODY} bytes")
        except _http_errors() as exc:
            raise ProviderUnavailable(
                f"{url}: {type(exc).__name__}: {exc}{_tls_hint(exc)}"
            ) from None
        if status != 200:
            raise ProviderUnavailable(f"{url}: HTTP {status}")
        try:
            return json.loads(body)
        except ValueError:
            raise ProviderUnavailable(f"{url}: the answer is not JSON") from None

    async def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, fetched at most once per METADATA_TTL."""
        now = self._clock()
        if self._metadata is None or now - self._metadata_at >= METADATA_TTL:
            doc = await self._get_json(self.settings.well_known)
            self._metadata = parse_metadata(doc, self.settings)
            self._metadata_at = now
        return self._metadata

    async def jwks(self, *, refresh: bool = False) -> jwt.PyJWKSet:
        """The provider's signing keys, cached; ``refresh`` refetches (an unknown kid)."""
        now = self._clock()
        stale = now - self._jwks_at >= METADATA_TTL
        may_refresh = refresh and now - self._jwks_at >= JWKS_MIN_REFRESH
        if self._jwks is None or stale or may_refresh:
            metadata = await self.metadata()
            doc = await self._get_json(metadata.jwks_uri)
            try:
                self._jwks = jwt.PyJWKSet.from_dict(doc)  # type: ignore[arg-type]
            except (jwt.PyJWTError, TypeError, AttributeError) as exc:
                raise ProviderUnavailable(f"{metadata.jwks_uri}: no usable key: {exc}") from None
            self._jwks_at = now
        return self._jwks

    async def begin(self, redirect_uri: str, return_to: str) -> tuple[str, str]:
        """(flow id for the HttpOnly cookie, the provider's authorization URL)."""
        metadata = await self.metadata()
        flow_id, flow = self.flows.begin(redirect_uri, return_to, self._clock())
        return flow_id, authorization_url(metadata, self.settings, flow)

    async def authorize(self, flow: PendingFlow) -> str:
        """The provider's authorization URL for a flow kept elsewhere (the edge's store)."""
        return authorization_url(await self.metadata(), self.settings, flow)

    async def finish(
        self, flow_id: str | None, query: Mapping[str, str]
    ) -> tuple[OidcIdentity, PendingFlow]:
        """The identity the callback's ``query`` proves, and the flow it ends."""
        flow = self.flows.take(flow_id, query.get("state"), self._clock())
        return await self.complete(flow, query), flow

    async def complete(self, flow: PendingFlow, query: Mapping[str, str]) -> OidcIdentity:
        """The identity the callback's ``query`` proves for ``flow`` (already taken, its
        ``state`` already checked)."""
        if "error" in query:
            raise FlowRefused(f"the provider refused the login: {query['error'][:100]}")
        code = query.get("code")
        if not code:
            raise FlowRefused("the provider's answer carries no code")
        metadata = await self.metadata()
        token = await self._exchange(metadata, flow, code)
        jwks = await self.jwks()
        kid = _kid_of(token)
        if kid is not None and all(k.key_id != kid for k in jwks.keys):
            jwks = await self.jwks(refresh=True)
        claims = validate_id_token(token, jwks, metadata, self.settings, flow.nonce, self._wall())
        return identity_from_claims(claims, self.settings)

    async def _exchange(self, metadata: ProviderMetadata, flow: PendingFlow, code: str) -> str:
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=flow.redirect_uri,
            code_verifier=flow.code_verifier,
        )
        where = metadata.token_endpoint
        try:
            async with self._http() as http:
                response = await http.post(
                    where,
                    content=body,
                    auth=(self.settings.client_id, self.settings.client_secret),
                    headers={
                        "content-type": "application/x-www-form-urlencoded",
                        "accept": "application/json",
                    },
                )
        except _http_errors() as exc:
            raise ProviderUnavailable(f"{where}: {type(exc).__name__}: {exc}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict):
            # invalid_grant: a used, expired or stolen code; the provider's word is kept short.
            error = answer.get("error") if isinstance(answer, dict) else None
            status = response.status_code
            raise FlowRefused(f"{where}: the code was refused (HTTP {status}, {error})")
        token = answer.get("id_token")
        if not isinstance(token, str):
            raise IdTokenRejected(f"{where}: the answer carries no id_token")
        return token


def tls_context(settings: OidcSettings) -> ssl.SSLContext:
    """The TLS context for a provider: its own CAs if it names any, else the system's."""
    if settings.ca_bundle is None and settings.ca_pem is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=settings.ca_bundle, cadata=settings.ca_pem)


def check_ca_pem(value: object) -> str | None:
    """Why ``value`` is no usable ``ca_pem`` (PEM text of one or more CA certificates), or
    None when it is."""
    if not isinstance(value, str) or "-----BEGIN CERTIFICATE-----" not in value:
        return "must be PEM text holding at least one CA certificate (-----BEGIN CERTIFICATE-----)"
    try:
        ssl.create_default_context(cadata=value)
    except (ssl.SSLError, ValueError) as exc:
        return f"is not a readable PEM certificate bundle ({exc})"
    return None


def _tls_hint(exc: Exception) -> str:
    if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
        return ""
    return (
        " (the provider's certificate is not trusted: if a private CA issued it, give that CA"
        " as the identity provider's config.ca_pem)"
    )


def _kid_of(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None
