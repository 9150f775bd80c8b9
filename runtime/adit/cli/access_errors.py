"""The access client's one-line errors: why the WebSocket to the edge did not open, told
apart so that each names its fix.

* the TCP connection: refused (nothing listens there: ``--edge``), or another socket error;
* TLS: a certificate no trusted CA signed (``--cacert``), one for another name (no route at
  the edge, or ``--edge`` names another server), or another TLS failure (a plain-HTTP port);
* the upgrade's answer: 404 (the edge has no route for the hostname), 502 (the tunnel is up
  but its connector reached no origin), any other status said as it is, with the title of
  the edge's error page (:mod:`adit.edge.pages`) or the message of its JSON error.
"""

from __future__ import annotations

import html
import json
import re
import ssl

from adit.credentials.search_path import ORIGIN_CERT_FILE
from adit.protocol.hostnames import join_host_port

__all__ = ["dial_error", "edge_reason", "refusal_error"]

#: OpenSSL's verify codes (``X509_V_ERR_*``) that mean "no trusted CA signed this".
_UNTRUSTED = {
    2,  # UNABLE_TO_GET_ISSUER_CERT
    18,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # SELF_SIGNED_CERT_IN_CHAIN
    20,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
#: ``X509_V_ERR_HOSTNAME_MISMATCH`` and ``X509_V_ERR_IP_ADDRESS_MISMATCH``.
_NAME_MISMATCH = {62, 64}
#: The most of the edge's reason quoted in an error.
_MAX_REASON = 160


def dial_error(
    exc: BaseException, *, address: str, port: int, server_name: str, ca_source: str
) -> str:
    """The message for a failed connect or TLS handshake to ``address:port``; ``ca_source``
    says where the CA trusted came from ("" for the system's)."""
    where = join_host_port(address, port)
    # A private flow dials the API listener cert.pem names, trusting the CA pinned there.
    private = ca_source == ORIGIN_CERT_FILE
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        if exc.verify_code in _NAME_MISMATCH:
            fix = (
                f"the API URL in {ORIGIN_CERT_FILE} (or --api-url) names another server"
                if private
                else f"the edge may have no route for {server_name}, or --edge names another "
                "server; check --hostname and --edge"
            )
            return (
                f"TLS: the edge at {where} presented a certificate that is not valid for "
                f"{server_name} (name mismatch): {fix}"
            )
        if exc.verify_code in _UNTRUSTED:
            if private:
                signer = f"the edge CA pinned in {ca_source}"
                fix = "run `adit tunnel login` again if the edge's CA changed"
            else:
                signer = f"the CA in {ca_source}" if ca_source else "a CA the system trusts"
                fix = "give the edge's CA with --cacert CA.pem"
            return (
                f"TLS: the edge at {where} presented a certificate for {server_name} that is "
                f"not signed by {signer} (untrusted CA: {detail}): {fix}"
            )
        return f"TLS: the certificate of the edge at {where} was refused: {detail}"
    if isinstance(exc, ssl.SSLError):
        fix = (
            f"is the API URL in {ORIGIN_CERT_FILE} the edge's API listener?"
            if private
            else "is it an HTTPS listener? (for a plain-HTTP one, give --edge http://HOST:PORT)"
        )
        return f"TLS handshake with the edge at {where} failed ({exc.reason or exc}): {fix}"
    if isinstance(exc, ConnectionRefusedError):
        fix = (
            f"is the edge's API listener, named in {ORIGIN_CERT_FILE} (or --api-url), up?"
            if private
            else "give the edge's public listener with --edge HOST:PORT"
        )
        return (
            f"cannot connect to the edge at {where}: connection refused (nothing listens "
            f"there; {fix})"
        )
    if isinstance(exc, TimeoutError):
        return f"cannot connect to the edge at {where}: no answer in time"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot connect to the edge at {where}: {reason}"


def refusal_error(status: int, body: bytes, hostname: str) -> str:
    """The message for an upgrade the edge answered with ``status`` (not 101)."""
    # The edge's page heads "Error 404: ..."; the status is said already.
    reason = edge_reason(body).removeprefix(f"Error {status}: ")
    said = f": {reason}" if reason else ""
    if status == 404:
        return (
            f"the edge has no route for {hostname} (404{said}): check --hostname, or route "
            f"it to a tunnel with `adit tunnel route dns TUNNEL {hostname}`"
        )
    if status == 502:
        return (
            f"the tunnel for {hostname} could not reach its origin (502{said}): check the "
            "connector's ingress rule for it and that the origin service runs"
        )
    if status == 401:
        # Access wants an identity and none came (no stored login, or an expired one).
        return (
            f"Access refused {hostname} without a login (401{said}): run `adit access login "
            f"https://{hostname}`, or give a service token with --service-token-id and "
            "--service-token-secret"
        )
    return f"the edge refused the WebSocket upgrade for {hostname} with status {status}{said}"


def edge_reason(body: bytes) -> str:
    """What the edge's error body says, in one short line: a JSON error's message, an HTML
    page's heading (or title), else its first line of text."""
    text = body[:8192].decode("utf-8", "replace")
    reason = ""
    try:
        answer = json.loads(text)
        # The API's envelope ({"errors": [{"message"}]}), or Access's own 401/403 body
        # ({"error", "message"}).
        message = answer["message"] if "message" in answer else answer["errors"][0]["message"]
        reason = str(message)
    except (ValueError, KeyError, IndexError, TypeError):
        match = re.search(r"<h1[^>]*>(.*?)</h1>", text, re.I | re.S) or re.search(
            r"<title[^>]*>(.*?)</title>", text, re.I | re.S
        )
        if match:
            reason = html.unescape(re.sub(r"<[^>]+>", "", match.group(1)))
        elif "<" not in text:
            reason = text.strip().split("\n", 1)[0]
    reason = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"
