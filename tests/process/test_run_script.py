"""``./run``, the checkout's entry point: its usage, and what each command installs.

The install test runs the real script in a copy of the checkout's top level whose ``.venv``
holds recording stand-ins for pip, ruff, mypy and adit: what is under test is the script's
choice of what to install and when, not pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("tunnel", "test", "check", "shell", "fuzz", "bench", "packages-test", "help")


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(cwd / "run"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "SHELL": "/bin/sh"},
    )


def test_no_argument_prints_the_usage_and_succeeds() -> None:
    result = _run(ROOT)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert f"  {command}" in result.stdout, command
    assert ".venv/bin/adit" in result.stdout
    assert result.stderr == ""


def test_unknown_command_prints_the_usage_on_stderr_and_exits_2() -> None:
    result = _run(ROOT, "tunnle")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "unknown command: tunnle" in result.stderr
    for command in COMMANDS:
        assert f"  {command}" in result.stderr, command


def _fake_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout with ./run, pyproject.toml and a .venv of recording stand-ins."""
    top = tmp_path / "checkout"
    top.mkdir()
    shutil.copy2(ROOT / "run", top / "run")
    shutil.copy2(ROOT / "pyproject.toml", top / "pyproject.toml")
    bin_dir = top / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls"
    for name in ("python", "pip", "ruff", "mypy", "adit"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        tool.chmod(0o755)
    return top, calls


def _pip_installs(calls: Path) -> list[str]:
    if not calls.exists():
        return []
    return [line for line in calls.read_text().splitlines() if line.startswith("pip install -q -e")]


def test_tunnel_installs_no_test_extra_and_test_still_does(tmp_path: Path) -> None:
    top, calls = _fake_checkout(tmp_path)

    result = _run(top, "tunnel")
    assert result.returncode == 0, result.stderr
    assert _pip_installs(calls) == ["pip install -q -e ."]
    assert ".venv/bin/adit" in result.stderr  # where adit is, said once after installing
    assert "adit tunnel --hello-world" in calls.read_text()

    # The tunnel's install stamp must not make check (or test) skip the test extra.
    result = _run(top, "check")
    assert result.returncode == 0, result.stderr
    assert _pip_installs(calls) == ["pip install -q -e .", "pip install -q -e .[test]"]

    # Both installed now: neither installs again.
    for command in ("tunnel", "check"):
        result = _run(top, command)
        assert result.returncode == 0, result.stderr
    assert len(_pip_installs(calls)) == 2
    assert ".venv/bin/adit" not in result.stderr


def test_shell_puts_adit_on_path(tmp_path: Path) -> None:
    top, _calls = _fake_checkout(tmp_path)
    result = _run(top, "shell", "sh", "-c", "command -v adit")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(top / ".venv" / "bin" / "adit")
