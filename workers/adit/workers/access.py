"""``originRequest.access.required``: only requests with a valid Cloudflare Access JWT pass.

cloudflared's ``ingress/middleware/jwtvalidator.go`` (go-oidc's ``IDTokenVerifier`` over a
remote key set), checked the same way here with PyJWT:

* The token is the ``Cf-Access-Jwt-Assertion`` header; without one the request is refused.
* Its signature is RS256 (go-oidc's only default algorithm) by a key of the team's JWKS,
  fetched over HTTPS from ``<issuer>/cdn-cgi/access/certs``; ``iss`` must be the issuer,
  ``https://<teamName>.cloudflareaccess.com`` (``.fed.`` for ``environment: fed``; adit's
  ``teamDomain`` names another, e.g. a self-hosted edge's Access); ``exp`` must be present and
  not past; an ``nbf`` may be up to 5 minutes ahead (go-oidc's leeway for clock skew).
* At least one ``aud`` must be one of ``audTag``.

Every failure is a 403 (cloudflared answers 502 for a bad signature or an expired token, a
quirk not worth copying: the request is refused, the gateway is fine), and so is a key set
that cannot be fetched: fail closed, with an error in the log.

Keys are cached per issuer and fetched again when a token names a key the cache lacks (the
rotation OpenID Connect prescribes), at most once per :data:`REFETCH_INTERVAL` and one fetch
at a time, so tokens with made-up key ids cost the team's endpoint nothing more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, Final

import jwt

from adit.config.origin import AccessSettings

__all__ = [
    "ACCESS_JWT_HEADER",
    "AccessDenied",
    "AccessGate",
    "KeySet",
    "certs_url",
    "issuer_of",
]

log = logging.getLogger("adit.workers.access")

ACCESS_JWT_HEADER: Final = "cf-access-jwt-assertion"
CERTS_PATH: Final = "/cdn-cgi/access/certs"
ALGORITHMS: Final = ("RS256",)
#: How far in the future a token's ``nbf`` may be (go-oidc's clock-skew leeway).
NBF_LEEWAY: Final = 300.0
#: The longest a key set fetch may take (connect, TLS, body).
FETCH_TIMEOUT: Final = 10.0
#: A key set larger than this is refused (Cloudflare's is a few KiB).
MAX_KEY_SET_BYTES: Final = 256 * 1024
#: The shortest time between two fetches of one issuer's keys (after a failure too).
REFETCH_INTERVAL: Final = 5.0
#: Distinct ``access`` settings remembered before the memory is cleared (reloads add some).
MAX_VERIFIERS: Final = 256


class AccessDenied(Exception):
    """The request may not reach the origin; ``str()`` says why (for the log, not the eyeball)."""


def issuer_of(settings: AccessSettings) -> str:
    """The token issuer the settings name (cloudflared's ``certsURL``)."""
    if settings.team_domain:
        return settings.team_domain
    if settings.environment == "fed":
        return f"https://{settings.team_name}.fed.cloudflareaccess.com"
    return f"https://{settings.team_name}.cloudflareaccess.com"


def certs_url(issuer: str) -> str:
    """Where the issuer publishes its signing keys (JWKS)."""
    return issuer + CERTS_PATH


def _fetch(url: str) -> bytes:
    """GET ``url`` over verified HTTPS (system trust store, ``SSL_CERT_FILE`` honoured)."""
    context = ssl.create_default_context()
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - https only (teamDomain is validated)
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT, context=context) as response:  # noqa: S310
        body: bytes = response.read(MAX_KEY_SET_BYTES + 1)
    if len(body) > MAX_KEY_SET_BYTES:
        raise ValueError(f"the key set is larger than {MAX_KEY_SET_BYTES} bytes")
    return body


class KeySet:
    """One issuer's signing keys: cached, fetched again for unknown key ids, bounded."""

    def __init__(
        self,
        url: str,
        *,
        fetch: Callable[[str], bytes] = _fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._error: str = ""

    async def candidates(self, kid: str | None, *, refresh: bool = False) -> list[jwt.PyJWK]:
        """The keys that may have signed a token naming ``kid`` (every key when it names none).

        Fetches the set first when it was never fetched, when ``kid`` is not in it, or when
        ``refresh`` (no cached key verified the token), unless the last fetch is less than
        :data:`REFETCH_INTERVAL` ago. Raises :class:`AccessDenied` when there is no key at
        all (the set cannot be fetched).
        """
        if refresh or not self._match(kid):
            await self._refetch()
        found = self._match(kid)
        if not self._keys:
            raise AccessDenied(f"no signing keys from {self.url}: {self._error or 'none'}")
        return found

    def _match(self, kid: str | None) -> list[jwt.PyJWK]:
        if kid is None:
            return list(self._keys.values())
        key = self._keys.get(kid)
        return [key] if key is not None else []

    async def _refetch(self) -> None:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        now = self._clock()
        if self._fetched_at is not None and now - self._fetched_at < REFETCH_INTERVAL:
            return
        self._fetched_at = now
        self._inflight = asyncio.ensure_future(self._load())
        try:
            await asyncio.shield(self._inflight)
        finally:
            self._inflight = None

    async def _load(self) -> None:
        try:
            body = await asyncio.to_thread(self._fetch, self.url)
            keys = _parse_key_set(body)
        except Exception as exc:  # any failure: keep what we had, refuse what we cannot check
            self._error = f"{type(exc).__name__}: {exc}"
            log.error(
                "Cannot fetch the Access signing keys; requests to rules with "
                "access.required are refused until it works url=%s error=%r",
                self.url,
                self._error,
            )
            return
        self._error = ""
        self._keys = keys
        log.info("Fetched the Access signing keys url=%s keys=%d", self.url, len(keys))


def _parse_key_set(body: bytes) -> dict[str, jwt.PyJWK]:
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JSON Web Key Set")
    keys: dict[str, jwt.PyJWK] = {}
    for item in data["keys"]:
        try:
            key = jwt.PyJWK.from_dict(item)
        except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError):
            continue  # a key of a kind this verifier never uses
        keys[key.key_id or ""] = key
    if not keys:
        raise ValueError("the key set has no usable key")
    return keys


class _Verifier:
    """The check of one rule's ``access`` settings."""

    def __init__(self, settings: AccessSettings, keys: KeySet, clock: Callable[[], float]) -> None:
        self.issuer = issuer_of(settings)
        self.audiences = frozenset(settings.aud_tags)
        self.keys = keys
        self.clock = clock

    async def verify(self, token: str) -> None:
        """Return if ``token`` passes; raise :class:`AccessDenied` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AccessDenied(f"malformed token: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise AccessDenied(f"token signed with {header.get('alg')!r}, not RS256")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        claims = self._decode(token, await self.keys.candidates(kid))
        if claims is None:
            # As go-oidc: no cached key verified it, so the keys may have changed.
            claims = self._decode(token, await self.keys.candidates(kid, refresh=True))
        if claims is None:
            raise AccessDenied("the token's signature is not by a key of the team")
        self._check_claims(claims)

    def _decode(self, token: str, keys: Iterable[jwt.PyJWK]) -> dict[str, Any] | None:
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=list(ALGORITHMS),
                    issuer=self.issuer,
                    # Audience and nbf are checked below, the way cloudflared checks them.
                    options={
                        "require": ["exp", "iss"],
                        "verify_aud": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
                continue
            except jwt.ExpiredSignatureError:
                raise AccessDenied("the token has expired") from None
            except jwt.PyJWTError as exc:
                raise AccessDenied(f"invalid token: {exc}") from None
            return claims
        return None

    def _check_claims(self, claims: dict[str, Any]) -> None:
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float):
                raise AccessDenied("invalid token: nbf is not a number")
            if nbf > self.clock() + NBF_LEEWAY:
                raise AccessDenied("the token is not valid yet (nbf)")
        audience = claims.get("aud")
        tags = [audience] if isinstance(audience, str) else audience
        if not isinstance(tags, list) or not self.audiences.intersection(
            t for t in tags if isinstance(t, str)
        ):
            raise AccessDenied(f"Invalid token in jwt: {audience}")


class AccessGate:
    """Decides, per request, whether a rule with ``access.required`` lets it through.

    One per worker: key sets are shared by every rule of the same issuer.
    """

    def __init__(
        self,
        *,
        fetch: Callable[[str], bytes] = _fetch,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._key_sets: dict[str, KeySet] = {}
        self._verifiers: dict[AccessSettings, _Verifier] = {}

    async def check(self, headers: Iterable[tuple[str, str]], settings: AccessSettings) -> None:
        """Return if the request may pass; raise :class:`AccessDenied` with the reason."""
        token = next((v for n, v in headers if n.lower() == ACCESS_JWT_HEADER), "")
        if not token:
            raise AccessDenied("no access token in request")
        if not settings.team_name and not settings.team_domain:
            raise AccessDenied("access.required is set without a teamName: nothing can pass")
        await self._verifier(settings).verify(token)

    def _verifier(self, settings: AccessSettings) -> _Verifier:
        verifier = self._verifiers.get(settings)
        if verifier is None:
            if len(self._verifiers) >= MAX_VERIFIERS:
                self._verifiers.clear()
            url = certs_url(issuer_of(settings))
            keys = self._key_sets.get(url)
            if keys is None:
                keys = self._key_sets[url] = KeySet(url, fetch=self._fetch)
            verifier = self._verifiers[settings] = _Verifier(settings, keys, self._clock)
        return verifier
