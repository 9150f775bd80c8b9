"""Logging set-up shared by every adit process."""

from __future__ import annotations

from adit.logs.configure import LOG_FILE_NAME, LogSettings, configure_logging, parse_level
from adit.logs.formats import ConsoleFormatter, ContextFilter, JsonFormatter, fields

__all__ = [
    "LOG_FILE_NAME",
    "ConsoleFormatter",
    "ContextFilter",
    "JsonFormatter",
    "LogSettings",
    "configure_logging",
    "fields",
    "parse_level",
]
