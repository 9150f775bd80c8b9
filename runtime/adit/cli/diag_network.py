"""``network.json`` of ``adit tunnel diag``: can this host reach each edge address it uses?

cloudflared runs traceroute to ``region{1,2}.v2.argotunnel.com``; adit's edges are whatever
the operator hosts, and a traceroute to the internet says little about them. Instead, each
edge address the connector dials is checked the way the connector would use it:

- ``tcp``: a TCP connect, and how long it took;
- ``tls``: the TLS handshake of the HTTP/2 transport (SNI ``h2.cftunnel.com``, no ALPN, as
  cloudflared and adit's connector dial it), its time, version and the certificate's
  subject, issuer and expiry. The certificate is not
  verified here (diag has no ``--cacert``); the connector's own log says when it fails to;
- ``quic``: a QUIC handshake (SNI ``quic.cftunnel.com``, ALPN ``argotunnel``) over UDP.
  ``reachable`` is true when the edge answered at all (even with an error): a timeout is
  what a firewall dropping UDP looks like, and why a connector falls back to HTTP/2.

Every check is bounded by ``timeout`` seconds, and at most ``MAX_ADDRESSES`` are checked.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

__all__ = ["MAX_ADDRESSES", "check_edges"]

MAX_ADDRESSES = 16
_H2_SNI = "h2.cftunnel.com"
_QUIC_SNI = "quic.cftunnel.com"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)


def _certificate(der: bytes | None) -> dict[str, str]:
    if not der:
        return {}
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
    }


def check_tcp_tls(host: str, port: int, timeout: float) -> dict[str, Any]:
    """The ``tcp`` and ``tls`` results for one address."""
    result: dict[str, Any] = {}
    start = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        result["tcp"] = {"ok": False, "error": str(exc) or type(exc).__name__, "ms": _ms(start)}
        result["tls"] = {"ok": False, "error": "skipped: no TCP connection"}
        return result
    result["tcp"] = {"ok": True, "ms": _ms(start), "peer": sock.getpeername()[0]}
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # see the module docstring: timing and shape only
    start = time.monotonic()
    try:
        with context.wrap_socket(sock, server_hostname=_H2_SNI) as tls:
            result["tls"] = {
                "ok": True,
                "ms": _ms(start),
                "version": tls.version(),
                "cipher": (tls.cipher() or ("",))[0],
                "verified": False,
                **_certificate(tls.getpeercert(binary_form=True)),
            }
    except (OSError, ValueError) as exc:
        result["tls"] = {"ok": False, "error": str(exc) or type(exc).__name__, "ms": _ms(start)}
    finally:
        sock.close()
    return result


async def _quic_handshake(host: str, port: int) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=["argotunnel"],
        server_name=_QUIC_SNI,
        verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=1350,
    )
    async with connect(host, port, configuration=configuration) as client:
        client.close()


def check_quic(host: str, port: int, timeout: float) -> dict[str, Any]:
    """The ``quic`` result for one address."""

    async def bounded() -> None:
        await asyncio.wait_for(_quic_handshake(host, port), timeout)

    start = time.monotonic()
    try:
        asyncio.run(bounded())
    except TimeoutError:
        return {"ok": False, "reachable": False, "error": "no answer over UDP", "ms": _ms(start)}
    except (OSError, ValueError) as exc:
        # aioquic's close during the handshake is a ConnectionError without an errno: the
        # edge answered. An errno (ICMP port unreachable, no route, DNS) means it did not.
        answered = isinstance(exc, OSError) and exc.errno is None
        return {
            "ok": False,
            "reachable": answered,
            "error": str(exc) or type(exc).__name__,
            "ms": _ms(start),
        }
    return {"ok": True, "reachable": True, "ms": _ms(start)}


def check_edges(addresses: list[str], timeout: float = 5.0) -> tuple[dict[str, Any], bool]:
    """``network.json``'s body (one entry per address) and whether every check passed."""
    report: dict[str, Any] = {}
    all_ok = True
    for address in list(dict.fromkeys(addresses))[:MAX_ADDRESSES]:
        try:
            host, port = _split(address)
        except ValueError:
            report[address] = {"error": "not a host:port address"}
            all_ok = False
            continue
        entry = check_tcp_tls(host, port, timeout)
        entry["quic"] = check_quic(host, port, timeout)
        all_ok = all_ok and entry["tcp"]["ok"] and entry["tls"]["ok"]
        report[address] = entry
    return report, all_ok
