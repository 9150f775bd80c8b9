"""The HTTP/2 configuration push's bodies (PROTOCOL.md §4.6.1), both directions.

The edge sends ``{"version": N, "config": {...}}`` on a stream marked
``cf-cloudflared-proxy-connection-upgrade: update-configuration``; the connector answers 200
with ``{"lastAppliedVersion": N, "err": null}`` (cloudflared's ``UpdateConfigurationResponse``
as Go marshals it: its ``err`` is a Go error, which marshals as ``{}``, so from cloudflared the
edge learns *that* a push was rejected but not why; adit's connector puts the message there).
Over QUIC the same pair is the ``updateConfiguration`` RPC.
"""

from __future__ import annotations

import json

__all__ = [
    "MAX_ANSWER",
    "UNSAID",
    "ConfigUpdateError",
    "decode_answer",
    "decode_update",
    "encode_answer",
    "encode_update",
]

#: An answer is a few dozen bytes; anything much bigger is not one.
MAX_ANSWER = 64 * 1024
_INT32 = range(-(1 << 31), 1 << 31)
#: What cloudflared's answer over HTTP/2 says of a rejection (its Go error marshals as ``{}``).
UNSAID = "rejected by the connector (it did not say why)"


class ConfigUpdateError(ValueError):
    """A push or its answer that is not what the protocol says."""


def encode_update(version: int, config: bytes) -> bytes:
    """The edge's request body; ``config`` is the JSON text of the config object."""
    if version not in _INT32:
        raise ConfigUpdateError(f"version {version} is not an int32")
    return b'{"version":%d,"config":%s}' % (version, config)


def decode_update(body: bytes) -> tuple[int, bytes]:
    """The version and the config's JSON text of a push (the connector's side)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigUpdateError(f"configuration push is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigUpdateError("configuration push is not a JSON object")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in _INT32:
        raise ConfigUpdateError("configuration push has no int32 version")
    return version, json.dumps(obj.get("config")).encode()


def encode_answer(version: int, error: str | None) -> bytes:
    """The connector's answer body."""
    return json.dumps({"lastAppliedVersion": version, "err": error}).encode()


def decode_answer(body: bytes) -> tuple[int, str | None]:
    """The version the connector runs and its error (None: no error) from an answer body."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ConfigUpdateError("the connector's answer is not JSON") from None
    if not isinstance(obj, dict):
        raise ConfigUpdateError("the connector's answer is not a JSON object")
    version = obj.get("lastAppliedVersion", -1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigUpdateError("the connector's answer has no lastAppliedVersion")
    error = obj.get("err")
    if error is None:
        return version, None
    if isinstance(error, str) and error:
        return version, error
    return version, UNSAID
