"""The origin certificate ``cert.pem`` written by ``tunnel login``.

A PEM block ``ARGO TUNNEL TOKEN`` holding JSON ``{"zoneID","accountID","apiToken","endpoint"?}``
exactly as cloudflared writes it, plus adit's key ``"apiURL"`` (where the management API lives)
and an optional ``CERTIFICATE`` block with the edge's CA, which cloudflared skips as a legacy
block. The API token is a bearer secret: it never appears in a repr.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adit.credentials.errors import OriginCertError
from adit.credentials.gojson import GoJsonError, expect_str, fill_fields, go_json_dumps

__all__ = [
    "OriginCert",
    "decode_origin_cert",
    "encode_origin_cert",
    "read_origin_cert",
    "write_origin_cert",
]

_TOKEN_BLOCK = "ARGO TUNNEL TOKEN"  # noqa: S105 (a PEM block type, not a secret)
_LEGACY_BLOCKS = frozenset({"PRIVATE KEY", "CERTIFICATE"})
_FIELDS = ("zoneID", "accountID", "apiToken", "endpoint", "apiURL")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN (?P<type>[^-\r\n]*)-----\r?\n(?P<body>.*?)-----END (?P=type)-----",
    re.DOTALL,
)


@dataclass(frozen=True)
class OriginCert:
    """An account login: which account, the API token, and (adit) where the API is."""

    zone_id: str
    account_id: str
    api_token: str = field(repr=False)
    endpoint: str = ""
    #: adit extra: the management API base URL.
    api_url: str = ""
    #: adit extra: PEM of the CA the API's (and the edge's) certificates chain to.
    edge_ca_pem: str = field(default="", repr=False)


def _pem_body(body: bytes) -> bytes:
    # PEM headers ("Key: value") may precede the base64; Go's pem package skips them.
    lines = [ln for ln in body.splitlines() if b":" not in ln]
    return base64.b64decode(b"".join(line.strip() for line in lines), validate=True)


def decode_origin_cert(blocks: bytes) -> OriginCert:
    """Parse cert.pem contents with cloudflared's rules and messages."""
    if not blocks:
        raise OriginCertError("cannot decode empty certificate")
    found: dict[str, Any] = {}
    token_seen = False
    ca_blocks: list[str] = []
    for match in _PEM_BLOCK.finditer(blocks):
        block_type = match["type"].decode("ascii", "replace")
        if block_type in _LEGACY_BLOCKS:
            if block_type == "CERTIFICATE":
                ca_blocks.append(match[0].decode("ascii", "replace") + "\n")
            continue
        if block_type != _TOKEN_BLOCK:
            raise OriginCertError(f"unknown block {block_type} in the certificate")
        if token_seen and (found.get("zoneID") or found.get("apiToken")):
            raise OriginCertError("found multiple tokens in the certificate")
        token_seen = True
        try:
            found.update(fill_fields(_pem_body(match["body"]), _FIELDS))
        except (GoJsonError, binascii.Error, ValueError):
            # cloudflared ignores a token that does not parse; the check below reports it.
            continue
    try:
        cert = OriginCert(
            zone_id=expect_str(found.get("zoneID", ""), "zoneID"),
            account_id=expect_str(found.get("accountID", ""), "accountID"),
            api_token=expect_str(found.get("apiToken", ""), "apiToken"),
            endpoint=expect_str(found.get("endpoint", ""), "endpoint").lower(),
            api_url=expect_str(found.get("apiURL", ""), "apiURL"),
            edge_ca_pem="".join(ca_blocks),
        )
    except GoJsonError as exc:
        raise OriginCertError("missing token in the certificate") from exc
    if not cert.zone_id or not cert.api_token:
        raise OriginCertError("missing token in the certificate")
    return cert


def _pem_encode(block_type: str, data: bytes) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {block_type}-----\n" + "\n".join(lines) + f"\n-----END {block_type}-----\n"


def encode_origin_cert(cert: OriginCert) -> bytes:
    """The file contents: the token block (cloudflared's JSON order) then the CA, if any."""
    obj: dict[str, Any] = {
        "zoneID": cert.zone_id,
        "accountID": cert.account_id,
        "apiToken": cert.api_token,
    }
    if cert.endpoint:
        obj["endpoint"] = cert.endpoint
    if cert.api_url:
        obj["apiURL"] = cert.api_url
    text = _pem_encode(_TOKEN_BLOCK, go_json_dumps(obj).encode("utf-8"))
    if cert.edge_ca_pem:
        text += cert.edge_ca_pem.strip() + "\n"
    return text.encode("ascii")


def read_origin_cert(path: str | os.PathLike[str]) -> OriginCert:
    """Load and decode a cert.pem file."""
    text_path = os.fspath(path)
    try:
        blocks = Path(text_path).read_bytes()
    except OSError as exc:
        raise OriginCertError(f"cannot read {text_path} to load origin certificate") from exc
    return decode_origin_cert(blocks)


def write_origin_cert(path: str | os.PathLike[str], cert: OriginCert) -> None:
    """Write cert.pem with mode 0600, creating its directory with mode 0700."""
    file_path = Path(path)
    file_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(file_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(encode_origin_cert(cert))
