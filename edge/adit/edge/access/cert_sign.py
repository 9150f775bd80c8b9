"""``POST /cdn-cgi/access/cert_sign``: an SSH certificate for the bearer of an application's
session token, where cloudflared's ``access ssh-gen`` asks for one (sshgen/sshgen.go: the
body ``{"public_key", "jwt", "issuer"}``, the answer ``{"id", "certificate", "expires_at"}``,
a refusal ``{"status", "message"}``). Served on every application hostname and on the team
domain (cloudflared posts to the token's issuer); never forwarded.

The token must be a live session of the application its ``aud`` names (signed by the
account's key, not expired, not signed out), the application must have a CA
(:mod:`.ssh_ca`), and the application's policies must still allow the user now (from the
address asking): a session that was allowed yesterday gets no certificate after the policy
changed. The decision is in the access log like any other.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from adit.edge.access.app_cookies import token_claims_aud
from adit.edge.access.engine import Subject, evaluate
from adit.edge.access.gate import AccessGate, FlowRequest
from adit.edge.access.model import Application
from adit.edge.access.pages import JsonAnswer
from adit.edge.access.ssh_ca import InvalidPublicKey, SshCas, sign_user_key
from adit.edge.access.store import AccessStore

__all__ = ["CERT_SIGN", "CertSigner"]

log = logging.getLogger("adit.edge.access")

CERT_SIGN: Final = "/cdn-cgi/access/cert_sign"


def _answer(status: int, what: dict[str, Any]) -> JsonAnswer:
    body = json.dumps(what, separators=(",", ":")).encode() + b"\n"
    return JsonAnswer(
        status, str(status), "", "", body=body, headers=(("Cache-Control", "no-store"),)
    )


def _refusal(status: int, message: str) -> JsonAnswer:
    return _answer(status, {"status": status, "message": message})


class CertSigner:
    """Answers ``cert_sign`` for one edge process."""

    def __init__(
        self,
        gate: AccessGate,
        store: AccessStore,
        *,
        country_of: Callable[[str], str | None] | None = None,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._gate = gate
        self._store = store
        self._cas = SshCas(store)
        self._country_of = country_of
        self._clock = clock

    def _application(self, request: FlowRequest, token: str) -> Application | None:
        """The application the token claims to be for, among those this hostname may sign
        for: the hostname's own, or on the team domain the account's."""
        table = self._store.table()
        claimed = token_claims_aud(token)
        account = table.team_hosts.get(request.host)
        for apps in table.apps.values():
            for app in apps:
                if app.aud not in claimed:
                    continue
                if app.domain == request.host or app.account == account:
                    return app
        return None

    async def __call__(self, request: FlowRequest, body: bytes) -> JsonAnswer:
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raw = None
        if not isinstance(raw, dict):
            return _refusal(400, "the body must be JSON: {public_key, jwt}")
        token, public_key = raw.get("jwt"), raw.get("public_key")
        if not isinstance(token, str) or not isinstance(public_key, str):
            return _refusal(400, "public_key and jwt are required (strings)")
        app = self._application(request, token)
        claims = self._gate.session_claims(app, token) if app is not None else None
        if app is None or claims is None:
            log.info("access: cert_sign on %s refused: no live session token", request.host)
            return _refusal(401, "the token is no live session of an application here: log in")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            return _refusal(403, "the session has no user e-mail to issue a certificate for")
        ca = self._cas.find(app.id, app.aud)
        if ca is None:
            return _refusal(404, f"{app.name} has no short-lived certificate CA")
        if not self._allowed(request, app, claims, email):
            return _refusal(403, f"Access to {app.name} is denied for {email}")
        try:
            signed = sign_user_key(ca.key(), public_key, email=email, now=self._clock())
        except InvalidPublicKey as exc:
            return _refusal(400, str(exc))
        log.info("access: SSH certificate for %s on %s (%s)", email, app.domain, signed.serial)
        return _answer(200, dict(signed.json()))

    def _allowed(
        self, request: FlowRequest, app: Application, claims: dict[str, Any], email: str
    ) -> bool:
        if self._country_of is not None:
            country = self._country_of(request.client_ip)
        else:
            country = claims.get("country") or None
        raw = claims.get("custom")
        custom: dict[str, Any] = raw if isinstance(raw, dict) else {}
        subject = Subject(
            email=email,
            claims={k: tuple(v) if isinstance(v, list) else (str(v),) for k, v in custom.items()},
            country=country,
            client_ip=request.client_ip,
        )
        decision = evaluate(self._store.table().policies.get(app.id, ()), subject)
        self._gate.record(app, subject, claims, decision, request.ray)
        return decision.action == "allow"
