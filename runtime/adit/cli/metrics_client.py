"""A plain HTTP GET against a connector's metrics listener, for ``tunnel ready`` and ``diag``.

The listener is the connector's own (``adit.metrics_listener``): HTTP/1.1, one
request per connection, on localhost unless the operator chose otherwise. Errors are worded
as Go's ``net/http`` words them, since cloudflared's messages quote them.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

__all__ = [
    "KNOWN_METRICS_ADDRESSES",
    "MetricsUnreachable",
    "Response",
    "base_address",
    "get",
]

#: Where a connector started without ``--metrics`` listens: the first free of these
#: (cloudflared's ``GetMetricsKnownAddresses`` for a host runtime; the ports are
#: ``adit.metrics_listener.DEFAULT_METRICS_PORTS``).
KNOWN_METRICS_ADDRESSES = tuple(f"localhost:{port}" for port in range(20241, 20246))


class MetricsUnreachable(Exception):
    """Nothing answered at the address (refused, timed out, not HTTP)."""


@dataclass(frozen=True)
class Response:
    """Status and body of one GET."""

    status: int
    body: bytes


def base_address(address: str) -> str:
    """``host:port`` from ``--metrics`` as cloudflared accepts it (``http://`` optional)."""
    return address.removeprefix("http://").rstrip("/")


def get(address: str, path: str, timeout: float = 15.0) -> Response:
    """GET ``http://address/path``; :class:`MetricsUnreachable` with Go's wording on failure."""
    address = base_address(address)
    host, _, port_text = address.rpartition(":")
    url = f"http://{address}{path}"
    try:
        port = int(port_text)
    except ValueError:
        raise MetricsUnreachable(
            f'Get "{url}": dial tcp {address}: address {address}: missing port in address'
        ) from None
    host = host.strip("[]") or "localhost"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json;version=1"})
        response = conn.getresponse()
        return Response(response.status, response.read())
    except ConnectionRefusedError:
        raise MetricsUnreachable(
            f'Get "{url}": dial tcp {address}: connect: connection refused'
        ) from None
    except TimeoutError:
        raise MetricsUnreachable(
            f'Get "{url}": context deadline exceeded (Client.Timeout exceeded)'
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise MetricsUnreachable(f'Get "{url}": {exc}') from None
    finally:
        conn.close()
