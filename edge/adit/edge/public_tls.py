"""The TLS settings of the public HTTPS listener (every SNI name's context gets them).

Mozilla's "intermediate" server configuration (TLS 1.2 and 1.3; ECDHE with AES-GCM or
ChaCha20-Poly1305 for TLS 1.2, which is also what RFC 9113 §9.2 asks of HTTP/2 over TLS 1.2;
the client's cipher preference, since every one offered is strong), session resumption by
tickets (Python's contexts issue them unless told not to), and neither TLS compression
(CRIME) nor renegotiation. ALPN offers ``h2`` first, then ``http/1.1``: WebSocket and
clients without HTTP/2 stay on HTTP/1.1.
"""

from __future__ import annotations

import ssl

__all__ = ["ALPN", "INTERMEDIATE_CIPHERS", "harden_public_tls"]

ALPN = ("h2", "http/1.1")

#: Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3's are OpenSSL's defaults, all AEAD).
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def harden_public_tls(context: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the public listener's protocol versions, ciphers, options and ALPN."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_NO_TICKET
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(list(ALPN))
    return context
