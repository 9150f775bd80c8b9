"""A worker's command line and boot message (read from stdin before anything else)."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.ipc.messages import (
    EdgeTarget,
    IngressSnapshot,
    Start,
    WorkerBoot,
    WorkerSettings,
    encode,
    frame,
)
from adit.ipc.rendezvous import WORKER_BOOT_ERROR
from adit.workers.process import WorkerOptions, main, parse_worker_args


@pytest.fixture(autouse=True)
def _signals() -> Iterator[None]:
    # main() sets the worker's SIGINT/SIGTERM dispositions: give pytest its own back.
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _boot(slot: int) -> bytes:
    settings = WorkerSettings(
        slot=slot,
        connector_id="00000000-0000-0000-0000-000000000002",
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        tunnel_id="00000000-0000-0000-0000-000000000001",
        conn_indexes=[0],
        edges=[EdgeTarget("127.0.0.1", 1)],
        edge_ca_pem="",
        ingress=IngressSnapshot(version=1),
    )
    return frame(encode(WorkerBoot(Start(settings))))


def test_arguments_in_both_spellings() -> None:
    assert parse_worker_args(["--slot", "1", "--runtime-dir=/run/x", "--parent-pid", "7"]) == (
        WorkerOptions(1, Path("/run/x"), 7)
    )
    assert parse_worker_args(["--runtime-dir", "/d", "--slot=0"]) == WorkerOptions(0, Path("/d"))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--slot", "1"],
        ["--slot", "x", "--runtime-dir", "/d"],
        ["--slot", "1", "--runtime-dir"],
        ["--slot", "1", "--slot", "2", "--runtime-dir", "/d"],
        ["--slot", "1", "--runtime-dir", "/d", "--cpu", "0"],
    ],
)
def test_bad_arguments_are_a_boot_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, stdin=io.BytesIO(_boot(1))) == WORKER_BOOT_ERROR
    assert capsys.readouterr().err.startswith("usage: python -m adit.workers")


def test_closed_stdin_ends_the_worker_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    # The supervisor could not load its settings and said so; the worker adds nothing.
    argv = ["--slot", "0", "--runtime-dir", "/d"]
    assert main(argv, stdin=io.BytesIO(b"")) == WORKER_BOOT_ERROR
    assert main(argv, stdin=io.BytesIO(b"\0\0")) == WORKER_BOOT_ERROR
    assert capsys.readouterr() == ("", "")


def test_a_message_cut_short_is_unreadable(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--slot", "0", "--runtime-dir", "/d"]
    assert main(argv, stdin=io.BytesIO(_boot(0)[:-3])) == WORKER_BOOT_ERROR
    assert "unreadable boot message" in capsys.readouterr().err


def test_unreadable_or_misaddressed_boot_message(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--slot", "0", "--runtime-dir", "/d"]
    assert main(argv, stdin=io.BytesIO(frame(b"\xc1garbage"))) == WORKER_BOOT_ERROR
    assert "unreadable boot message" in capsys.readouterr().err
    assert main(argv, stdin=io.BytesIO(_boot(1))) == WORKER_BOOT_ERROR
    assert "settings for slot 1" in capsys.readouterr().err
