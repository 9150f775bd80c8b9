"""``GET /config`` and ``GET /quicktunnel`` of the metrics server, in cloudflared's shapes.

``/config`` is orchestration/orchestrator.go ``GetVersionedConfigJSON``: ``{"version":N,
"config":{"ingress":[...],"warp-routing":{...},"originRequest":{...}}}`` with every rule's
``originRequest`` fully resolved (durations in seconds, Go's field order) and the top-level
one the defaults. It is built from the ingress snapshot in force (the one a SIGHUP reload or a
remote push replaced). The version is the edge's while a pushed configuration is in force, as
cloudflared's; for a local one cloudflared reports -1 because it never changes one, but adit
reloads it, so it shows its own number (1 at start, +1 per change), the same one
``cloudflared_orchestration_config_version`` shows, which makes a reload visible here. Nothing
secret is in the snapshot (no credentials, no token), so nothing needs hiding.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable

from adit.ipc.messages import IngressSnapshot

__all__ = ["config_routes", "quicktunnel_json", "versioned_config_json"]

#: Go's sniffed type for both bodies (cloudflared writes them without a Content-Type).
_CONTENT_TYPE = "text/plain; charset=utf-8"


def _seconds(value: float) -> float | int:
    """Go marshals a ``CustomDuration`` as its float seconds (``7``, ``1.5``)."""
    return int(value) if value == int(value) else value


def _origin_request(options: object) -> dict[str, object]:
    from adit.config.origin import OriginOptions

    assert isinstance(options, OriginOptions)
    access: dict[str, object] = {"teamName": "", "audTag": None}
    if options.access is not None:
        access = {
            **({"required": True} if options.access.required else {}),
            "teamName": options.access.team_name,
            "audTag": list(options.access.aud_tags) or None,
        }
    ip_rules = [
        {"prefix": rule.prefix, "ports": list(rule.ports) or None, "allow": rule.allow}
        for rule in options.ip_rules
    ]
    return {
        "connectTimeout": _seconds(options.connect_timeout),
        "tlsTimeout": _seconds(options.tls_timeout),
        "tcpKeepAlive": _seconds(options.tcp_keep_alive),
        "noHappyEyeballs": options.no_happy_eyeballs,
        "keepAliveTimeout": _seconds(options.keep_alive_timeout),
        "keepAliveConnections": options.keep_alive_connections,
        "httpHostHeader": options.http_host_header,
        "originServerName": options.origin_server_name,
        "matchSNItoHost": options.match_sni_to_host,
        "caPool": options.ca_pool,
        "noTLSVerify": options.no_tls_verify,
        "disableChunkedEncoding": options.disable_chunked_encoding,
        "bastionMode": options.bastion_mode,
        "proxyAddress": options.proxy_address,
        "proxyPort": options.proxy_port,
        "proxyType": options.proxy_type,
        "ipRules": ip_rules or None,
        "http2Origin": options.http2_origin,
        "access": access,
    }


def versioned_config_json(snapshot: IngressSnapshot, max_active_flows: int = 0) -> bytes:
    """The body of ``/config`` for ``snapshot`` (``max_active_flows``: ``--max-active-flows``,
    the one ``warp-routing`` key adit applies; cloudflared shows only keys that were set)."""
    from adit.ipc.snapshot import build_ingress

    ingress = build_ingress(snapshot)
    rules = [
        {
            "hostname": rule.hostname,
            "path": rule.path.pattern if rule.path is not None else None,
            "service": rule.service.url,
            "Handlers": None,
            "originRequest": _origin_request(rule.options),
        }
        for rule in ingress.rules
    ]
    warp = _warp_routing(snapshot)
    if max_active_flows:
        # The flag wins over the pushed value (orchestrator.go overrideMaxActiveFlows).
        warp["maxActiveFlows"] = max_active_flows
    body = {
        "version": snapshot.remote_version if snapshot.remote_version >= 0 else snapshot.version,
        "config": {
            "ingress": rules,
            "warp-routing": warp,
            "originRequest": _origin_request(ingress.defaults),
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


#: ``warp-routing`` keys cloudflared's ``RawConfig`` shows when set (``enabled`` is gone).
_WARP_KEYS = ("connectTimeout", "maxActiveFlows", "tcpKeepAlive")


def _warp_routing(snapshot: IngressSnapshot) -> dict[str, object]:
    """The pushed configuration's ``warp-routing`` keys that were set (a local one has none
    adit applies besides ``--max-active-flows``)."""
    if not snapshot.remote_config:
        return {}
    try:
        pushed = json.loads(snapshot.remote_config)
    except ValueError:
        return {}
    warp = pushed.get("warp-routing") if isinstance(pushed, dict) else None
    if not isinstance(warp, dict):
        return {}
    return {key: warp[key] for key in _WARP_KEYS if warp.get(key) is not None}


def quicktunnel_json(url: str) -> bytes:
    """The body of ``/quicktunnel``: the quick tunnel's hostname, "" for any other tunnel.

    cloudflared's is a bare name served on 443; adit's embedded edge listens on a port of this
    machine, so the hostname carries it (``abc.localhost:8080``): what a client needs."""
    hostname = urllib.parse.urlsplit(url).netloc if url else ""
    return json.dumps({"hostname": hostname}, separators=(",", ":")).encode()


def config_routes(
    config: Callable[[], bytes], quicktunnel: Callable[[], bytes]
) -> dict[str, Callable[[], tuple[str, bytes]]]:
    """``/config`` and ``/quicktunnel`` as routes of the metrics server."""
    return {
        "/config": lambda: (_CONTENT_TYPE, config()),
        "/quicktunnel": lambda: (_CONTENT_TYPE, quicktunnel()),
    }
