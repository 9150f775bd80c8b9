"""Client TLS contexts for https and ``unix+tls`` origins.

Contexts are costly to build (the system CA store is parsed each time), so one is kept per
distinct (caPool, noTLSVerify) pair for the life of the worker.
"""

from __future__ import annotations

import ssl

__all__ = ["ClientContexts"]


class ClientContexts:
    """A cache of client :class:`ssl.SSLContext` keyed by the options that shape them."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, bool, bool], ssl.SSLContext] = {}

    def get(self, ca_pool: str, no_tls_verify: bool, http2: bool = False) -> ssl.SSLContext:
        """The context for these options: system roots plus ``ca_pool``, or no verification.

        ``http2`` offers ``h2`` before ``http/1.1`` in ALPN (``http2Origin``).
        """
        key = (ca_pool, no_tls_verify, http2)
        context = self._contexts.get(key)
        if context is None:
            context = _build(ca_pool, no_tls_verify, http2)
            self._contexts[key] = context
        return context


def _build(ca_pool: str, no_tls_verify: bool, http2: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    if no_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_pool:
        # caPool adds to the system roots, as cloudflared's origin cert pool does.
        context.load_verify_locations(cafile=ca_pool)
    return context
