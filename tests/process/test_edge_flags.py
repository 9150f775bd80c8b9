"""`adit edge` refuses flags it cannot run with: one line naming the flag, exit 2, before it
starts anything (never a traceback, never another address than the one asked for)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness import adit_command

pytestmark = pytest.mark.process

LOOPBACK = ["--tunnel-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]


def _edge(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*adit_command(), "edge", "--api-listen", "127.0.0.1:0", *LOOPBACK, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,  # a refused flag answers at once; an edge that started would hang here
        env={**os.environ, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--http-listen", "nonsense", "missing port in address"),
        ("--http-listen", "127.0.0.1:99999", "the port is no number 0-65535"),
        ("--api-listen", "127.0.0.1:-1", "the port is no number 0-65535"),
        ("--tunnel-listen", "127.0.0.1:7844x", "the port is no number 0-65535"),
        ("--https-listen", "[::1:443", "missing ']' in address"),
        ("--http-listen", "999.1.1.1:80", "999.1.1.1 is no IPv4 address"),
        ("--advertise", "edge.example.com", "missing port in address"),
        ("--advertise", "edge.example.com:0", "connectors cannot dial port 0"),
        ("--advertise", ":7844", "connectors need a host to dial"),
    ],
)
def test_a_bad_address_flag_is_one_line_naming_it(
    tmp_path: Path, flag: str, value: str, reason: str
) -> None:
    result = _edge(tmp_path, "--state-dir", str(tmp_path / "state"), flag, value)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"adit edge: {flag} {value!r}: {reason} (want host:port"), lines
    assert not (tmp_path / "state").exists()  # refused before anything started


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("a file", "not a directory"),
        ("under a file", "cannot create it: Not a directory"),
        ("under /proc", "cannot create it: No such file or directory"),
    ],
)
def test_an_unusable_state_dir_is_one_line_naming_it(
    tmp_path: Path, kind: str, reason: str
) -> None:
    (tmp_path / "file").write_text("")
    state = {
        "a file": tmp_path / "file",
        "under a file": tmp_path / "file" / "state",
        "under /proc": Path("/proc/adit-state"),
    }[kind]
    result = _edge(tmp_path, "--state-dir", str(state))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"adit edge: --state-dir {state}: {reason}"), lines


def test_admin_commands_refuse_an_unusable_state_dir_alike(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    state = tmp_path / "file" / "state"
    result = subprocess.run(
        [*adit_command(), "edge", "account", "create", "acme", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"adit edge: --state-dir {state}: cannot create it: Not a directory"
    ]
