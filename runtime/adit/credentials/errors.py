"""What can go wrong reading or writing tunnel credentials, tokens and origin certificates.

Every message is cloudflared's own where cloudflared has one, so scripts that grep for it and
people who search for it land in the same place.
"""

from __future__ import annotations

__all__ = [
    "CredentialsError",
    "CredentialsFileError",
    "InvalidCredentialsJson",
    "InvalidTunnelToken",
    "OriginCertError",
]


class CredentialsError(Exception):
    """Base of every credentials problem; ``str()`` is the message shown to the user."""


class CredentialsFileError(CredentialsError):
    """A tunnel credentials file is missing, unreadable, or cannot be written."""


class InvalidCredentialsJson(CredentialsFileError):
    """The credentials file is not the JSON ``tunnel create`` writes.

    ``detail`` keeps the parser's own complaint for a log line; the message stays cloudflared's.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__("Invalid JSON when parsing tunnel credentials file")
        self.path = path
        self.detail = detail


class InvalidTunnelToken(CredentialsError):
    """A tunnel token that does not decode (a usage error in cloudflared, exit 255)."""

    def __init__(self) -> None:
        super().__init__("Provided Tunnel token is not valid.")


class OriginCertError(CredentialsError):
    """``cert.pem`` is missing, unreadable or malformed."""
