"""Where cert.pem and ``<UUID>.json`` are looked for: adit's directories, then cloudflared's.

Paths keep their ``~`` for messages (as cloudflared prints them) and are expanded on use.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = [
    "ORIGIN_CERT_FILE",
    "SEARCH_DIRECTORIES",
    "default_login_directory",
    "find_credentials_file",
    "find_default_origin_cert",
    "missing_origin_cert_message",
]

ORIGIN_CERT_FILE = "cert.pem"

SEARCH_DIRECTORIES: tuple[str, ...] = (
    "~/.adit",
    "/etc/adit",
    "~/.cloudflared",
    "~/.cloudflare-warp",
    "~/cloudflare-warp",
    "/etc/cloudflared",
    "/usr/local/etc/cloudflared",
)


def default_login_directory() -> Path:
    """Where ``tunnel login`` writes cert.pem."""
    return Path(os.path.expanduser(SEARCH_DIRECTORIES[0]))


def find_default_origin_cert() -> Path | None:
    """The first cert.pem found in the search directories."""
    for directory in SEARCH_DIRECTORIES:
        candidate = Path(os.path.expanduser(directory)) / ORIGIN_CERT_FILE
        if candidate.is_file():
            return candidate
    return None


def missing_origin_cert_message() -> str:
    """cloudflared's explanation when no cert.pem was given or found."""
    dirs = " ".join(SEARCH_DIRECTORIES)
    return (
        f"Cannot determine default origin certificate path. No file {ORIGIN_CERT_FILE} in "
        f"[{dirs}]. You need to specify the origin certificate path by specifying the "
        "origincert option in the configuration file, or set TUNNEL_ORIGIN_CERT environment "
        "variable"
    )


def find_credentials_file(tunnel_id: uuid.UUID, origin_cert: Path | None) -> Path | None:
    """``<UUID>.json`` next to cert.pem, then in the search directories (cloudflared's order)."""
    name = f"{tunnel_id}.json"
    candidates: list[Path] = []
    if origin_cert is not None:
        candidates.append(Path(os.path.expanduser(str(origin_cert))).parent / name)
    candidates.extend(Path(os.path.expanduser(d)) / name for d in SEARCH_DIRECTORIES)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None
