"""Log line formats, ipc runtime directory, and the pure helpers of ``tunnel run``."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from adit.allocator import ENVIRONMENT as ALLOCATOR_ENVIRONMENT
from adit.cli.run import parse_edge_addresses, parse_tags
from adit.cli.state import CommandFailure
from adit.ipc.channels import (
    create_runtime_directory,
    events_endpoint,
    remove_runtime_directory,
    worker_endpoint,
)
from adit.ipc.messages import EdgeTarget
from adit.logs import ConsoleFormatter, ContextFilter, JsonFormatter, fields, parse_level
from adit.supervisor.app import worker_environment


def _record(message: str, **values: object) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(fields(**values))
    ContextFilter({"slot": 1}).filter(record)
    record.created = 0.0
    return record


def test_console_format_is_zerolog_like() -> None:
    line = ConsoleFormatter().format(_record("Registered tunnel connection", connIndex=0, b="x y"))
    assert (
        line == '1970-01-01T00:00:00Z INF Registered tunnel connection b="x y" connIndex=0 slot=1'
    )


def test_json_format() -> None:
    obj = json.loads(JsonFormatter().format(_record("hello", connIndex=2)))
    assert obj == {
        "level": "info",
        "time": "1970-01-01T00:00:00Z",
        "message": "hello",
        "slot": 1,
        "connIndex": 2,
    }


def test_levels() -> None:
    assert parse_level("warn") == logging.WARNING
    assert parse_level("fatal") == logging.CRITICAL
    assert parse_level("bogus") is None


def test_runtime_directory_is_private(tmp_path: Path) -> None:
    directory = create_runtime_directory({"RUNTIME_DIRECTORY": str(tmp_path)})
    try:
        assert directory.parent == tmp_path
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert events_endpoint(directory) == f"ipc://{directory}/events"
        assert worker_endpoint(directory, 3) == f"ipc://{directory}/worker-3"
    finally:
        remove_runtime_directory(directory)
    assert not directory.exists()


def test_worker_environment_hides_notify_socket() -> None:
    env = worker_environment({"NOTIFY_SOCKET": "/run/x", "LISTEN_FDS": "1", "PATH": "/bin"})
    assert env == {"PATH": "/bin", **ALLOCATOR_ENVIRONMENT}


def test_worker_environment_keeps_the_operators_malloc_settings() -> None:
    env = worker_environment({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert env["MALLOC_MMAP_THRESHOLD_"] == "131072"
    assert env["MALLOC_TRIM_THRESHOLD_"] == ALLOCATOR_ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]


def test_edge_addresses_alternate_locations() -> None:
    assert parse_edge_addresses(["a:1", "b:2,[::1]:3"]) == [
        EdgeTarget("a", 1, 0),
        EdgeTarget("b", 2, 1),
        EdgeTarget("::1", 3, 0),
    ]
    with pytest.raises(CommandFailure, match="Invalid edge address"):
        parse_edge_addresses(["nohost"])


def test_tags() -> None:
    assert parse_tags(["env=prod", "a=b=c"]) == {"env": "prod", "a": "b=c"}
    with pytest.raises(CommandFailure, match="Tag parse failure: Cannot parse tag value bad tag"):
        parse_tags(["bad tag"])
