"""JSON shapes of the management API: cloudflared's ``cfapi`` structs and the v4 envelope.

Field names and nesting follow ``cfapi/tunnel.go`` (``Tunnel``, ``TunnelWithToken``,
``Connection``, ``ActiveClient``), ``cfapi/ip_route.go`` (``Route``, ``DetailedRoute``) and
``cfapi/virtual_network.go`` (``VirtualNetwork``) so the real cloudflared CLI decodes them
unchanged; the extra fields a Cloudflare object carries (``account_tag``, ``status``,
``tun_type``, ``virtual_network_name``...) are added as Cloudflare's API has them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import uuid
from collections.abc import Iterable
from typing import Any

from adit.edge.registry import LiveConnection
from adit.edge.store import IpRoute, Tunnel, VirtualNetwork

__all__ = [
    "active_clients_json",
    "connection_json",
    "envelope",
    "error_envelope",
    "ip_route_json",
    "rfc3339",
    "tunnel_json",
    "virtual_network_json",
]


def rfc3339(moment: datetime.datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z`` (Go's ``time.Time`` text form), or None."""
    if moment is None:
        return None
    utc = moment.astimezone(datetime.UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def _origin_ip(value: str) -> str:
    # Go decodes origin_ip as net.IP: anything but a bare address would fail the whole reply.
    for candidate in (value, value.rsplit(":", 1)[0].strip("[]")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return ""


def connection_json(conn: LiveConnection) -> dict[str, Any]:
    """One ``cfapi.Connection``."""
    return {
        "colo_name": conn.location,
        "id": str(conn.connection_id),
        "is_pending_reconnect": conn.draining,
        "origin_ip": _origin_ip(conn.origin_ip),
        "opened_at": rfc3339(conn.opened_at),
        "client_id": str(conn.client_id),
        "client_version": conn.client_version,
        # adit's own (Cloudflare's API has no such field; cloudflared ignores it).
        "protocol": conn.protocol,
    }


def tunnel_json(
    tunnel: Tunnel, connections: Iterable[LiveConnection], token: str | None = None
) -> dict[str, Any]:
    """A ``cfapi.Tunnel`` (``TunnelWithToken`` when ``token`` is given)."""
    conns = [] if tunnel.deleted_at is not None else list(connections)
    live = [c for c in conns if not c.draining]
    if tunnel.deleted_at is not None:
        status = "deleted"
    elif live:
        status = "healthy"
    else:
        status = "inactive"
    obj: dict[str, Any] = {
        "id": str(tunnel.id),
        "account_tag": tunnel.account_tag,
        "name": tunnel.name,
        "created_at": rfc3339(tunnel.created_at),
        "deleted_at": rfc3339(tunnel.deleted_at),
        "connections": [connection_json(c) for c in conns],
        "conns_active_at": rfc3339(min((c.opened_at for c in live), default=None)),
        "tun_type": "cfd_tunnel",
        "status": status,
        "remote_config": tunnel.remote_config,
    }
    if token is not None:
        obj["token"] = token
    return obj


def active_clients_json(connections: Iterable[LiveConnection]) -> list[dict[str, Any]]:
    """``[]cfapi.ActiveClient``: connections grouped by connector (client) ID."""
    by_client: dict[uuid.UUID, list[LiveConnection]] = {}
    for conn in connections:
        by_client.setdefault(conn.client_id, []).append(conn)
    clients = []
    for client_id, conns in by_client.items():
        conns.sort(key=lambda c: (c.opened_at, c.conn_index))
        first = conns[0]
        clients.append(
            {
                "id": str(client_id),
                "features": list(first.features),
                "version": first.client_version,
                "arch": first.arch,
                "run_at": rfc3339(first.opened_at),
                "conns": [connection_json(c) for c in conns],
            }
        )
    clients.sort(key=lambda c: (str(c["run_at"]), str(c["id"])))
    return clients


def ip_route_json(route: IpRoute, *, detailed: bool = False) -> dict[str, Any]:
    """A ``cfapi.Route`` (what create and delete answer), or with ``detailed`` a
    ``cfapi.DetailedRoute`` (what list and get-by-IP answer: the tunnel's name added)."""
    obj: dict[str, Any] = {
        "id": str(route.id),
        "network": route.network.compressed,
        "tunnel_id": str(route.tunnel_id),
        "virtual_network_id": str(route.virtual_network_id),
        "comment": route.comment,
        "created_at": rfc3339(route.created_at),
        "deleted_at": rfc3339(route.deleted_at),
    }
    if detailed:
        obj["tunnel_name"] = route.tunnel_name
        obj["tun_type"] = "cfd_tunnel"
        obj["virtual_network_name"] = route.virtual_network_name
    return obj


def virtual_network_json(vnet: VirtualNetwork) -> dict[str, Any]:
    """A ``cfapi.VirtualNetwork``."""
    return {
        "id": str(vnet.id),
        "comment": vnet.comment,
        "name": vnet.name,
        "is_default_network": vnet.is_default,
        "created_at": rfc3339(vnet.created_at),
        "deleted_at": rfc3339(vnet.deleted_at),
    }


def envelope(result: object, result_info: dict[str, int] | None = None) -> bytes:
    """A successful v4 envelope."""
    obj: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        obj["result_info"] = result_info
    return json.dumps(obj).encode("utf-8")


def error_envelope(code: int, message: str) -> bytes:
    """A failed v4 envelope with one error (cloudflared shows ``code: N, reason: msg``)."""
    obj = {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }
    return json.dumps(obj).encode("utf-8")
