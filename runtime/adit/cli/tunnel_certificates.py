"""``adit tunnel info``'s section on the public certificates of the tunnel's hostnames.

adit's addition to cloudflared's output, printed after it (what parses cloudflared's lines
still finds them where they were): from the edge's ``GET /adit/v1/certificates``, the rows of
the hostnames this tunnel routes. Nothing is printed when the edge serves no HTTPS (every row's
``source`` is null) or has no such endpoint (Cloudflare's API, an older edge).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from adit.cli.apiclient import ApiClient, ApiError

__all__ = ["certificate_lines"]

_HEADER = ("HOSTNAME", "SOURCE", "EXPIRES", "LAST ERROR")


def _expiry(value: object) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(row: dict[str, Any]) -> str:
    message, kind = row.get("last_error"), row.get("last_error_kind")
    if not message:
        return "-"
    return f"{kind}: {message}" if kind else str(message)


def certificate_lines(client: ApiClient, tunnel_id: uuid.UUID) -> list[str]:
    """The section's lines (a blank line first), or none at all."""
    try:
        rows = client.certificates()
    except ApiError:
        return []  # no such endpoint: the edge is not adit's, or predates it
    mine = [
        row
        for row in rows
        if row.get("tunnel_id") == str(tunnel_id) and row.get("source") is not None
    ]
    if not mine:
        return []
    table = [_HEADER] + [
        (
            str(row.get("hostname", "")),
            str(row.get("source")),
            _expiry(row.get("not_after")),
            _error(row),
        )
        for row in sorted(mine, key=lambda r: str(r.get("hostname", "")))
    ]
    widths = [max(len(line[i]) for line in table) + 1 for i in range(len(_HEADER))]
    body = ["".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    return ["", "PUBLIC CERTIFICATES:", *body]
