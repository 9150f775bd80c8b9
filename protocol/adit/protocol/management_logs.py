"""The ``/logs`` WebSocket's messages (cloudflared's ``management/events.go``), sans-IO.

Client → connector: ``{"type":"start_streaming","filters":{"events":[..],"level":"..",
"sampling":0.5}}`` or ``{"type":"stop_streaming"}``. Connector → client:
``{"type":"logs","logs":[{"time","level","message","event","fields"}..]}``.

cloudflared encodes ``level`` and ``event`` as Go enums with ``omitempty``: the zero values,
``debug`` and ``cloudflared``, are left out of what it sends, so a missing one means exactly
that. Both ends here read them that way and write them that way.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "EVENTS",
    "LEVELS",
    "START_STREAMING",
    "STOP_STREAMING",
    "ClientEvent",
    "InvalidManagementMessage",
    "LogEntry",
    "StreamingFilters",
    "encode_logs",
    "encode_start_streaming",
    "format_json",
    "format_line",
    "parse_client_event",
    "parse_logs",
]

#: Log levels in order (cloudflared's ``LogLevel``): a filter passes its level and above.
LEVELS: Final = ("debug", "info", "warn", "error")
#: Event types (cloudflared's ``LogEventType``).
EVENTS: Final = ("cloudflared", "http", "tcp", "udp")
START_STREAMING: Final = "start_streaming"
STOP_STREAMING: Final = "stop_streaming"


class InvalidManagementMessage(ValueError):
    """A message that is not one of the protocol's (the connector closes with 1003)."""


@dataclass(frozen=True, slots=True)
class StreamingFilters:
    """What a session wants: the events (empty: all), the lowest level, a sample rate."""

    events: frozenset[str] = frozenset()
    level: str | None = None
    #: 0 < sampling < 1 keeps about that share of what passes the other filters; 0 and 1
    #: keep everything (cloudflared's ``session.Filters``).
    sampling: float = 0.0

    def accepts(self, level: str, event: str, rand: random.Random | None = None) -> bool:
        """Whether an entry of ``level`` and ``event`` goes to the session (cloudflared's
        ``session.Insert``: level, then events, then sampling)."""
        if self.level is not None and LEVELS.index(self.level) > _level_rank(level):
            return False
        if self.events and event not in self.events:
            return False
        if 0 < self.sampling < 1:
            # cloudflared: rand.Intn(100) <= int(sampling*100).
            draw = (rand or random).randrange(100)
            return draw <= int(self.sampling * 100)
        return True

    def to_json(self) -> dict[str, Any]:
        """The ``filters`` object (fields left out when unset, as Go's omitempty does)."""
        out: dict[str, Any] = {}
        if self.events:
            out["events"] = [e for e in EVENTS if e in self.events]
        if self.level is not None:
            out["level"] = self.level
        if self.sampling:
            out["sampling"] = self.sampling
        return out


def _level_rank(level: str) -> int:
    try:
        return LEVELS.index(level)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """``start_streaming`` (with its filters) or ``stop_streaming``."""

    type: str
    filters: StreamingFilters = field(default_factory=StreamingFilters)


def parse_client_event(payload: bytes | str) -> ClientEvent:
    """A client's text message; raises :class:`InvalidManagementMessage`."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManagementMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidManagementMessage("not a JSON object")
    kind = obj.get("type")
    if kind == STOP_STREAMING:
        return ClientEvent(STOP_STREAMING)
    if kind != START_STREAMING:
        raise InvalidManagementMessage(f"invalid client message type was provided: {kind}")
    raw = obj.get("filters")
    if raw is None:
        return ClientEvent(START_STREAMING)
    if not isinstance(raw, dict):
        raise InvalidManagementMessage("filters is not an object")
    events = raw.get("events") or []
    level = raw.get("level")
    sampling = raw.get("sampling", 0)
    if not isinstance(events, list) or any(e not in EVENTS for e in events):
        raise InvalidManagementMessage("unable to unmarshal LogEventType")
    if level is not None and level not in LEVELS:
        raise InvalidManagementMessage("unable to unmarshal LogLevel")
    if not isinstance(sampling, int | float) or isinstance(sampling, bool):
        raise InvalidManagementMessage("sampling is not a number")
    return ClientEvent(
        START_STREAMING,
        StreamingFilters(frozenset(events), level, min(1.0, max(0.0, float(sampling)))),
    )


def encode_start_streaming(filters: StreamingFilters | None) -> bytes:
    """The client's first message (``filters`` left out when None, as cloudflared's tail
    does when no flag narrows the stream)."""
    obj: dict[str, Any] = {"type": START_STREAMING}
    if filters is not None:
        obj["filters"] = filters.to_json()
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log line as the stream carries it."""

    time: str
    level: str
    message: str
    event: str
    fields: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """cloudflared's ``Log`` with its omitempty fields."""
        out: dict[str, Any] = {}
        if self.time:
            out["time"] = self.time
        if self.level != "debug":
            out["level"] = self.level
        if self.message:
            out["message"] = self.message
        if self.event != "cloudflared":
            out["event"] = self.event
        if self.fields:
            out["fields"] = self.fields
        return out


def encode_logs(entries: list[LogEntry]) -> bytes:
    """A server ``logs`` message."""
    return json.dumps(
        {"type": "logs", "logs": [e.to_json() for e in entries]},
        separators=(",", ":"),
        default=str,
        ensure_ascii=False,
    ).encode()


def parse_logs(payload: bytes | str) -> list[LogEntry] | None:
    """The entries of a server ``logs`` message; None for another type (ignored by the
    client); raises :class:`InvalidManagementMessage` for what is no message at all."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManagementMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or not obj.get("type"):
        raise InvalidManagementMessage("invalid message type was provided")
    if obj["type"] != "logs":
        return None
    raw = obj.get("logs")
    if not isinstance(raw, list):
        raise InvalidManagementMessage("invalid logs event")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        level = item.get("level", "debug")
        event = item.get("event", "cloudflared")
        fields = item.get("fields")
        out.append(
            LogEntry(
                time=str(item.get("time", "")),
                level=level if level in LEVELS else "",
                message=str(item.get("message", "")),
                event=event if event in EVENTS else "",
                fields=fields if isinstance(fields, dict) else None,
            )
        )
    return out


def _go_json(value: object) -> str:
    """Go's ``json.Marshal`` text: compact, map keys sorted, HTML characters escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def format_line(entry: LogEntry) -> str:
    """``tail``'s default output: ``<time> <level> <event> <message> <fields-json>``."""
    fields = _go_json(entry.fields) if entry.fields else "null"
    return f"{entry.time} {entry.level} {entry.event} {entry.message} {fields}"


def format_json(entry: LogEntry) -> str:
    """``tail --output json``: the entry as cloudflared marshals it."""
    obj = entry.to_json()
    ordered = {k: obj[k] for k in ("time", "level", "message", "event", "fields") if k in obj}
    # The top level keeps Go's struct order; only the fields map is sorted.
    parts = [f"{_go_json(k)}:{_go_json(v)}" for k, v in ordered.items()]
    return "{" + ",".join(parts) + "}"
