"""``/accounts/{a}/cfd_tunnel/{id}/configurations``: remotely managed tunnel configuration.

Cloudflare's shapes: ``PUT`` with ``{"config": {"ingress": [...], "originRequest": {...},
"warp-routing": {...}}}`` answers the stored configuration ``{"account_id", "tunnel_id",
"version", "config", "source": "cloudflare", "created_at"}``; ``GET`` answers the same for the
latest one (``version`` 0, ``config`` null and ``source`` ``local`` for a tunnel that never had
one). The configuration is validated as a connector would (the last ingress rule a catch-all,
every service parsing, size limits); a bad one gets a 400 and leaves the stored one.

After a PUT the new version is pushed to every routable connection of the tunnel on this edge
(HTTP/2 and QUIC, adit's connectors and cloudflared's), and the answer waits for their answers
for up to :data:`~adit.edge.config_push.PUSH_TIMEOUT` seconds. adit adds ``pushes`` to the
result (one entry per connection: ``status`` ``applied``, ``rejected``, ``failed``,
``superseded`` or ``pending``, with the connector's ``error``), and a ``messages`` entry per
connection that did not apply it, so a caller sees at once that a connector kept its old
configuration and why. The config stays stored either way (it is what the owner asked for;
connectors that register later get it). ``GET`` shows each live connection's latest outcome.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from adit.config.errors import ConfigError
from adit.config.ingress import ingress_from_json
from adit.edge.api_json import rfc3339
from adit.edge.api_request import (
    BAD_REQUEST,
    NOT_FOUND,
    ApiError,
    Response,
    json_object,
    json_response,
)
from adit.edge.config_push import PUSH_TIMEOUT, PushOutcome, PushStatus
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store
from adit.edge.tunnel_configs import StoredConfig

__all__ = ["MAX_CONFIG_BYTES", "MAX_INGRESS_RULES", "TunnelConfigApi", "validate_config"]

#: The largest configuration (its JSON text) accepted: ample for thousands of rules, small
#: enough to push to every connection of a tunnel at once.
MAX_CONFIG_BYTES = 256 * 1024
MAX_INGRESS_RULES = 1000
#: Cloudflare's code for a configuration its validation refuses is not documented: adit's.
_INVALID_CONFIG = BAD_REQUEST
#: The ``messages`` code of a connection that did not apply a pushed version (adit's).
_NOT_APPLIED = 1100


def validate_config(config: object) -> str:
    """The configuration's canonical JSON text, or :class:`ApiError` 400 saying what is wrong."""
    if not isinstance(config, dict):
        raise ApiError(400, _INVALID_CONFIG, "Invalid request body: config must be a JSON object")
    text = json.dumps(config, separators=(",", ":"))
    if len(text) > MAX_CONFIG_BYTES:
        raise ApiError(
            400, _INVALID_CONFIG, f"config is larger than {MAX_CONFIG_BYTES // 1024} KiB"
        )
    rules = config.get("ingress")
    if isinstance(rules, list) and len(rules) > MAX_INGRESS_RULES:
        raise ApiError(
            400, _INVALID_CONFIG, f"config has more than {MAX_INGRESS_RULES} ingress rules"
        )
    try:
        ingress_from_json(config)
    except ConfigError as exc:
        raise ApiError(400, _INVALID_CONFIG, f"Invalid tunnel configuration: {exc}") from None
    return text


class TunnelConfigApi:
    """The ``configurations`` endpoints of one edge."""

    def __init__(self, store: Store, registry: ConnectionRegistry) -> None:
        self._store = store
        self._registry = registry

    async def dispatch(
        self, method: str, account: str, tunnel_id: uuid.UUID, body: bytes
    ) -> Response:
        tunnel = self._store.get_tunnel(account, tunnel_id)
        if tunnel is None:
            raise ApiError(404, NOT_FOUND, f"Tunnel {tunnel_id} not found")
        conns = [c for c in self._registry.connections(tunnel.id) if not c.draining]
        if method == "GET":
            stored = self._store.configs.get(tunnel.id)
            outcomes = self._registry.config_pusher.last_outcomes(conns)
            return self._answer(account, tunnel.id, stored, outcomes)
        if method != "PUT":
            raise ApiError(405, 10405, "Method not allowed")
        if tunnel.deleted_at is not None:
            raise ApiError(400, NOT_FOUND, f"Tunnel {tunnel.id} has been deleted")
        request = json_object(body)
        if "config" not in request:
            raise ApiError(400, _INVALID_CONFIG, "Invalid request body: config is required")
        text = validate_config(request["config"])
        stored = await self._store.off_loop(self._store.configs.put, account, tunnel.id, text)
        # Those that registered while the store wrote get it from their registration.
        conns = [c for c in self._registry.connections(tunnel.id) if not c.draining]
        outcomes = await self._registry.config_pusher.push_all(
            conns, stored.version, text.encode(), wait=PUSH_TIMEOUT + 1.0
        )
        return self._answer(account, tunnel.id, stored, outcomes)

    @staticmethod
    def _answer(
        account: str,
        tunnel_id: uuid.UUID,
        stored: StoredConfig | None,
        outcomes: list[PushOutcome],
    ) -> Response:
        result: dict[str, Any] = {
            "account_id": account,
            "tunnel_id": str(tunnel_id),
            "version": 0 if stored is None else stored.version,
            "config": None if stored is None else stored.config_object(),
            "source": "local" if stored is None else "cloudflare",
            "created_at": None if stored is None else rfc3339(stored.created_at),
            # adit's own: what each connection did with the latest push.
            "pushes": [o.json() for o in outcomes],
        }
        messages = [
            {
                "code": _NOT_APPLIED,
                "message": (
                    f"connector {o.client_id} connection {o.conn_index} ({o.protocol}) "
                    f"{o.status} version {o.version}" + (f": {o.error}" if o.error else "")
                ),
            }
            for o in outcomes
            if o.status in (PushStatus.REJECTED, PushStatus.FAILED)
            and (stored is None or o.version == stored.version)
        ]
        envelope = {"success": True, "errors": [], "messages": messages, "result": result}
        return json_response(200, json.dumps(envelope).encode())
