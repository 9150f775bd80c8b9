"""--logfile and --log-directory: JSON lines, rotation by the supervisor, --logfile wins."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.logs import LOG_FILE_NAME, LogSettings, configure_logging, fields


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_log_directory_rotates_at_one_megabyte_keeping_five(tmp_path: Path) -> None:
    configure_logging(LogSettings(log_directory=str(tmp_path / "logs")), context={"slot": 1})
    log = logging.getLogger("adit.test")
    for index in range(1_200):
        log.info("line %d %s", index, "x" * 6000, extra=fields(connIndex=index % 4))
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == [LOG_FILE_NAME] + [f"{LOG_FILE_NAME}.{n}" for n in range(1, 6)]
    for path in (tmp_path / "logs").iterdir():
        assert path.stat().st_size <= 1024 * 1024
    last = json.loads((tmp_path / "logs" / LOG_FILE_NAME).read_text().splitlines()[-1])
    assert last["slot"] == 1 and last["connIndex"] == 1_199 % 4 and last["level"] == "info"


def test_logfile_wins_over_log_directory(tmp_path: Path) -> None:
    logfile = tmp_path / "one.json"
    configure_logging(LogSettings(logfile=str(logfile), log_directory=str(tmp_path / "dir")))
    logging.getLogger("adit.test").warning("hello")
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert any("Both --logfile and --log-directory" in line["message"] for line in lines)
    assert lines[-1]["message"] == "hello" and lines[-1]["level"] == "warn"
    assert not (tmp_path / "dir" / LOG_FILE_NAME).exists()
