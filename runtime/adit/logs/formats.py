"""cloudflared's log line formats: the human console format and one JSON object per line.

Console: ``2026-11-25T19:29:13Z INF <message> key=value ...`` (UTC RFC 3339, fields sorted by
name, values quoted when they contain spaces or quotes), as zerolog's console writer prints.
JSON: ``{"level":"info","time":"...","message":"...", <fields>}``.

Structured fields ride on the record: pass ``extra=fields(connIndex=0)`` to a logging call;
process-wide fields (a worker's ``slot``) come from :class:`ContextFilter`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

__all__ = [
    "EVENT_ATTR",
    "ConsoleFormatter",
    "ContextFilter",
    "JsonFormatter",
    "event",
    "fields",
    "record_fields",
]

_FIELDS_ATTR = "adit_fields"
_CONTEXT_ATTR = "adit_context"

_SHORT_LEVEL = {
    logging.DEBUG: "DBG",
    logging.INFO: "INF",
    logging.WARNING: "WRN",
    logging.ERROR: "ERR",
    logging.CRITICAL: "FTL",
}
_LONG_LEVEL = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}


#: The record attribute that names a line's ``tail`` event (``http``, ``tcp``, ``udp``); lines
#: without one are ``cloudflared`` events, as in cloudflared.
EVENT_ATTR = "adit_event"


def event(name: str) -> dict[str, object]:
    """``extra=`` for a logging call whose line is an ``http``/``tcp``/``udp`` event for
    ``tail`` (merge it with :func:`fields`'s)."""
    return {EVENT_ATTR: name}


def fields(**values: object) -> dict[str, object]:
    """``extra=`` for a logging call that attaches structured fields to the line."""
    return {_FIELDS_ATTR: values}


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The record's context fields overlaid with its own fields."""
    merged: dict[str, object] = dict(getattr(record, _CONTEXT_ATTR, {}))
    merged.update(getattr(record, _FIELDS_ATTR, {}))
    return merged


class ContextFilter(logging.Filter):
    """Adds fixed fields (e.g. ``slot``) to every record passing through a handler."""

    def __init__(self, context: Mapping[str, object]) -> None:
        super().__init__()
        self._context = dict(context)

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the context; never drops a record."""
        setattr(record, _CONTEXT_ATTR, self._context)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def _console_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


class ConsoleFormatter(logging.Formatter):
    """zerolog's console format, without colour."""

    def format(self, record: logging.LogRecord) -> str:
        """One line: time, short level, message, sorted ``key=value`` fields."""
        parts = [_timestamp(record), _SHORT_LEVEL.get(record.levelno, "???"), record.getMessage()]
        extra = record_fields(record)
        if record.exc_info:
            extra.setdefault("error", self.formatException(record.exc_info))
        parts.extend(f"{key}={_console_value(extra[key])}" for key in sorted(extra))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, as cloudflared writes to ``--logfile`` and ``--output json``."""

    def format(self, record: logging.LogRecord) -> str:
        """``level``, ``time``, ``message`` and the fields."""
        obj: dict[str, object] = {
            "level": _LONG_LEVEL.get(record.levelno, "info"),
            "time": _timestamp(record),
            "message": record.getMessage(),
        }
        extra = record_fields(record)
        if record.exc_info:
            extra.setdefault("error", self.formatException(record.exc_info))
        for key, value in extra.items():
            obj.setdefault(key, value)
        return json.dumps(obj, default=str, ensure_ascii=False)
