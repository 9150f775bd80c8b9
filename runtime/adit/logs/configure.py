"""Install adit's log handlers: console on stderr, optional JSON file, optional rotating dir.

Mirrors cloudflared (``logger/create.go``): ``--loglevel`` debug/info/warn/error/fatal, the
console in the human format or JSON (``--output``), ``--logfile`` appended as JSON in addition
to the console, ``--log-directory`` a rotating ``adit.log`` (1 MB per file, 5 backups); when
both are given ``--logfile`` wins.

Several processes share the files: only the supervisor rotates (``rotate=True``); workers
append through a :class:`~logging.handlers.WatchedFileHandler`, which reopens the file after
the supervisor has rotated it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from adit.logs.formats import ConsoleFormatter, ContextFilter, JsonFormatter

__all__ = ["LOG_FILE_NAME", "LogSettings", "configure_logging", "parse_level"]

LOG_FILE_NAME: Final = "adit.log"
_MAX_BYTES: Final = 1024 * 1024
_BACKUPS: Final = 5

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


@dataclass(frozen=True)
class LogSettings:
    """The logging flags of ``tunnel run``, handed on to every worker."""

    #: ``debug``, ``info``, ``warn``, ``error`` or ``fatal``.
    level: str = "info"
    #: Console format: ``default`` (human) or ``json``.
    output: str = "default"
    #: Append JSON lines to this file (in addition to the console).
    logfile: str | None = None
    #: Rotating ``adit.log`` in this directory (ignored when ``logfile`` is set).
    log_directory: str | None = None


def parse_level(name: str) -> int | None:
    """The logging level for a cloudflared level name, or ``None`` when unknown."""
    return _LEVELS.get(name.strip().lower())


def _file_handler(settings: LogSettings, rotate: bool) -> logging.Handler | None:
    if settings.logfile:
        path = Path(os.path.expanduser(settings.logfile))
    elif settings.log_directory:
        path = Path(os.path.expanduser(settings.log_directory)) / LOG_FILE_NAME
    else:
        return None
    path.parent.mkdir(mode=0o744, parents=True, exist_ok=True)
    from logging import handlers  # only with a log file: not on every process's start-up path

    if rotate and not settings.logfile:
        return handlers.RotatingFileHandler(
            path, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"
        )
    return handlers.WatchedFileHandler(path, encoding="utf-8")


def configure_logging(
    settings: LogSettings, *, context: Mapping[str, object] | None = None, rotate: bool = True
) -> None:
    """Replace the root logger's handlers according to ``settings``.

    ``context`` fields (a worker's ``slot``) are added to every line. An unknown level falls
    back to info with cloudflared's error line.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    level = parse_level(settings.level)
    root.setLevel(logging.INFO if level is None else level)
    # aioquic logs every connection's handshake steps at info ("ALPN negotiated..."), one
    # line per connector dial: its warnings are what an operator needs.
    logging.getLogger("quic").setLevel(max(logging.WARNING, root.level))
    context_filter = ContextFilter(context or {})

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(JsonFormatter() if settings.output == "json" else ConsoleFormatter())
    console.addFilter(context_filter)
    root.addHandler(console)

    log = logging.getLogger("adit.logs")
    try:
        file_handler = _file_handler(settings, rotate)
    except OSError as exc:
        log.error("Cannot open the log file, logging to the console only error=%r", str(exc))
        file_handler = None
    if file_handler is not None:
        file_handler.setFormatter(JsonFormatter())
        file_handler.addFilter(context_filter)
        root.addHandler(file_handler)
    if level is None:
        log.error('Failed to parse log level "%s", using "info" instead', settings.level)
    if settings.logfile and settings.log_directory and rotate:
        log.error("Both --logfile and --log-directory were given; using --logfile")
