"""Tunnel tokens: ``base64std(JSON{"a","s","t","e"?})`` as ``tunnel token`` prints them.

adit may add two keys cloudflared ignores: ``"edge"`` (tunnel listener addresses) and ``"ca"``
(the edge CA's PEM); neither folds case-insensitively onto a cloudflared field.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from adit.credentials.errors import InvalidTunnelToken
from adit.credentials.gojson import (
    GoJsonError,
    decode_b64_bytes,
    decode_uuid,
    expect_str,
    fill_fields,
    go_json_dumps,
)
from adit.credentials.tunnel_credentials import NIL_TUNNEL_ID, TunnelCredentials

__all__ = ["decode_tunnel_token", "encode_tunnel_token"]

_FIELDS = ("a", "s", "t", "e", "edge", "ca")


def encode_tunnel_token(creds: TunnelCredentials, *, include_edge: bool = True) -> str:
    """The token for ``creds``; byte-identical to cloudflared's when there are no adit extras."""
    obj: dict[str, Any] = {
        "a": creds.account_tag,
        "s": base64.b64encode(creds.tunnel_secret).decode("ascii"),
        "t": str(creds.tunnel_id),
    }
    if creds.endpoint:
        obj["e"] = creds.endpoint
    if include_edge and creds.edge:
        obj["edge"] = list(creds.edge)
    if include_edge and creds.edge_ca_pem:
        obj["ca"] = creds.edge_ca_pem
    return base64.b64encode(go_json_dumps(obj).encode("utf-8")).decode("ascii")


def decode_tunnel_token(token: str) -> TunnelCredentials:
    """Decode a token; anything malformed is ``InvalidTunnelToken`` (cloudflared's message)."""
    try:
        raw = base64.b64decode(token.strip(), validate=True)
        found = fill_fields(raw, _FIELDS)
        edge_raw = found.get("edge", [])
        if not isinstance(edge_raw, list) or not all(isinstance(e, str) for e in edge_raw):
            raise GoJsonError("edge must be a list of strings")
        return TunnelCredentials(
            account_tag=expect_str(found.get("a", ""), "a"),
            tunnel_secret=decode_b64_bytes(found["s"], "s") if "s" in found else b"",
            tunnel_id=decode_uuid(found["t"], "t") if "t" in found else NIL_TUNNEL_ID,
            endpoint=expect_str(found.get("e", ""), "e"),
            edge=tuple(edge_raw),
            edge_ca_pem=expect_str(found.get("ca", ""), "ca"),
        )
    except (binascii.Error, ValueError) as exc:  # GoJsonError is a ValueError
        raise InvalidTunnelToken() from exc
