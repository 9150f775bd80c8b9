"""The management hostname: ``tail`` and host details, relayed to one connector of a tunnel.

Cloudflare routes ``management.argotunnel.com`` to a connector of the tunnel named in the
request's ``access_token``; the connector serves it with an internal ingress rule (cloudflared's
``management/service.go``). The edge does the same on its public listeners for the hostname
given with ``--management-hostname``: the token is verified here (signature, expiry, resource;
see :mod:`adit.edge.management_token`) before anything is forwarded, and the request can only
reach a connector of the tunnel the token names, so a token of tunnel A never reaches tunnel B.
What the connector is sent carries ``Host: management.argotunnel.com``, the name cloudflared's
connectors (and adit's) serve unless run with another ``--management-hostname``.

Refusals are JSON in the shape cloudflared's tail client decodes (``handleValidationError``):
``{"success":false,"errors":[{"code":N,"message":"..."}]}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from typing import ClassVar, Final
from urllib.parse import parse_qs

from adit.edge.management_token import RESOURCES, ManagementSigner, TokenRefused
from adit.edge.pages import ErrorPage
from adit.edge.registry import ConnectionRegistry, LiveConnection

__all__ = [
    "CONNECTOR_MANAGEMENT_HOST",
    "DEFAULT_MANAGEMENT_HOSTNAME",
    "ManagementGate",
    "ManagementRefusal",
]

log = logging.getLogger("adit.edge.management")

#: What connectors serve their management rule under (cloudflared's ``--management-hostname``
#: default): the Host every relayed request carries.
CONNECTOR_MANAGEMENT_HOST: Final = "management.argotunnel.com"
#: The edge's own default: the same name, so that cloudflared's ``tail`` (which dials
#: ``wss://management.argotunnel.com``) works against a self-hosted edge with nothing but a
#: hosts-file or DNS entry, and no tunnel route can take it (a route needs the zone, and no
#: account of a self-hosted edge is given ``argotunnel.com``). Operators who would rather
#: publish a name of their own pass ``--management-hostname management.example.com``.
DEFAULT_MANAGEMENT_HOSTNAME: Final = "management.argotunnel.com"

#: Which token resources open which path (cloudflared's management service routes).
_ADMIN: Final = frozenset({"admin"})
_PATHS: Final[dict[str, frozenset[str]]] = {
    "/ping": RESOURCES,
    "/logs": frozenset({"logs", "admin"}),
    "/host_details": frozenset({"host_details", "admin"}),
    "/metrics": _ADMIN,
    "/debug/pprof/heap": _ADMIN,
    "/debug/pprof/goroutine": _ADMIN,
}

# cloudflared's own management error codes where one fits (management/middleware.go).
_MISSING_TOKEN: Final = 1001


@dataclass(frozen=True, slots=True)
class ManagementRefusal(ErrorPage):
    """A refused management request, answered as cloudflared's management JSON error."""

    content_type: ClassVar[str] = "application/json"

    def render(self, host: str, ray: str) -> bytes:
        """``{"success":false,"errors":[{"code","message"}]}``."""
        return json.dumps(
            {"success": False, "errors": [{"code": int(self.code), "message": self.detail}]}
        ).encode()


def _refusal(status: int, code: int, message: str) -> ManagementRefusal:
    return ManagementRefusal(status, str(code), "management request refused", message)


MISSING_TOKEN = _refusal(401, _MISSING_TOKEN, "missing access_token query parameter")
BAD_TOKEN = _refusal(401, 1002, "invalid or expired access_token")
WRONG_RESOURCE = _refusal(403, 1003, "the access_token does not grant this resource")
UNKNOWN_PATH = _refusal(404, 1004, "no such management resource")
BAD_CONNECTOR = _refusal(400, 1005, "connector_id is not a UUID")
# cloudflared's tail says "no cloudflared connector available or reachable" for a 530.
NO_CONNECTOR = _refusal(530, 1006, "no connector of this tunnel is connected to the edge")


@dataclass(frozen=True, slots=True)
class ManagementAdmission:
    """A request let through: the connection to relay it over, and the tunnel (for logs)."""

    connection: LiveConnection
    tunnel_id: uuid.UUID


class ManagementGate:
    """Admits requests to the management hostname: a valid token for the path, and a live
    connector of the token's tunnel (the one asked for with ``connector_id``)."""

    def __init__(
        self, hostname: str, signer: ManagementSigner, registry: ConnectionRegistry
    ) -> None:
        self.hostname = hostname
        self._signer = signer
        self._registry = registry

    def admit(self, target: str) -> ManagementAdmission | ManagementRefusal:
        """Check ``target`` (path and query as received); never raises."""
        path, _, query = target.partition("?")
        allowed = _PATHS.get(path)
        if allowed is None:
            return UNKNOWN_PATH
        params = parse_qs(query, keep_blank_values=True)
        tokens = params.get("access_token", [])
        if len(tokens) != 1 or not tokens[0]:
            return MISSING_TOKEN
        try:
            claims = self._signer.verify(tokens[0])
        except TokenRefused as exc:
            log.info("management request refused: %s", exc)
            return BAD_TOKEN
        if not claims.resources & allowed:
            return WRONG_RESOURCE
        wanted: uuid.UUID | None = None
        connector = params.get("connector_id", [])
        if connector:
            try:
                wanted = uuid.UUID(connector[-1])
            except ValueError:
                return BAD_CONNECTOR
        chosen = self._pick(claims.tunnel_id, claims.account_tag, wanted)
        if chosen is None:
            return NO_CONNECTOR
        return ManagementAdmission(chosen, claims.tunnel_id)

    def _pick(
        self, tunnel_id: uuid.UUID, account_tag: str, connector: uuid.UUID | None
    ) -> LiveConnection | None:
        """A live connection of the tunnel, of ``connector`` when given. Only the token's
        tunnel is looked at, and its account must be the token's too (a tunnel ID is no
        secret; the signature is what binds the two)."""
        candidates = [
            conn
            for conn in self._registry.connections(tunnel_id)
            if not conn.draining
            and hmac.compare_digest(conn.account_tag.encode(), account_tag.encode())
            and (connector is None or conn.client_id == connector)
        ]
        if not candidates:
            return None
        if connector is None:
            picked = self._registry.pick(tunnel_id)
            if picked is not None and picked in candidates:
                return picked
        return next((c for c in candidates if c.responsive), candidates[0])
