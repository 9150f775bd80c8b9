"""A finished or expired secret rotation locks out a connector still on the old secret
(issue 13, item 19).

Two connectors serve one tunnel: "new" answers 200 from a real origin and rolls to the rotated
secret on SIGHUP; "old" answers 203 (``http_status:203``) and keeps the secret it started with.
Until the rotation ends both serve; from then on only "new" may.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from adversary import SteadyLoad
from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    Tunnel,
    adit_command,
    create_tunnel,
    start_connector,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "rotate.example.test"
REGISTERED = r"Registered tunnel connection tunnelID="
REFUSED = r"refused registration for tunnel \S+ from \S+: bad credentials"
LOCKED_OUT = "the secret it registered with is no longer accepted"


def _two_connectors(
    processes: Processes, account: Account, origin: Origin, tmp_path: Path
) -> tuple[Tunnel, Proc, Proc]:
    tunnel = create_tunnel(account, "rot", HOST)
    old_credentials = tmp_path / "old-credentials.json"
    shutil.copy(tunnel.credentials, old_credentials)
    new_config = write_config(tmp_path / "new.yml", HOST, [{"service": origin.url}])
    old_config = write_config(tmp_path / "old.yml", HOST, [{"service": "http_status:203"}])
    new = start_connector(
        processes, tunnel, new_config, name="new", extra=["--ha-connections", "1"]
    )
    old = processes.start(
        "old",
        [
            *adit_command(),
            "tunnel",
            "--config",
            str(old_config),
            "run",
            "--metrics",
            "127.0.0.1:0",
            "--ha-connections",
            "1",
            "--credentials-file",
            str(old_credentials),
            tunnel.name,
        ],
        env={"HOME": str(account.home)},
    )
    old.wait_for_log("Registered tunnel connection")
    return tunnel, new, old


def _rotate(account: Account, new: Proc, edge: Edge, *deadline: str) -> None:
    account.cli("tunnel", "rotate", *deadline, "rot")
    new.signal(signal.SIGHUP)
    edge.proc.wait_for_log(r"connection replaced tunnelID=", timeout=30)


def _served_by(load: SteadyLoad, start: float, end: float) -> dict[int, int]:
    counts: dict[int, int] = {}
    for outcome in load.between(start, end):
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _assert_refused_without_spinning(edge: Edge) -> None:
    """The old connector dials again and is refused, backing off (never a hot loop)."""
    edge.proc.wait_for_log(REFUSED, timeout=20)
    first = time.monotonic()
    time.sleep(10.0)
    refusals = len(re.findall(REFUSED, edge.proc.text()))
    assert refusals <= 6, f"{refusals} refused registrations in {time.monotonic() - first:.0f}s"


def test_finishing_a_rotation_closes_the_old_secrets_connections(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    _tunnel, new, old = _two_connectors(processes, account, origin, tmp_path)
    with SteadyLoad(edge, HOST, rate=20) as load:
        _rotate(account, new, edge)
        time.sleep(1.5)
        during = _served_by(load, time.monotonic() - 1.5, time.monotonic())
        out = account.cli("tunnel", "rotate", "--finish", "rot").stdout
        finished = time.monotonic()
        assert "Finished the secret rotation" in out, out
        time.sleep(3.0)
    # While the window was open both connectors served; once finished, only the new one.
    assert during.get(203, 0) > 0 and during.get(200, 0) > 0, during
    after = _served_by(load, finished + 1.0, finished + 3.0)
    assert after and set(after) == {200}, f"after --finish: {after}"
    assert LOCKED_OUT in edge.proc.text()
    _assert_refused_without_spinning(edge)
    assert new.popen.poll() is None and "Registered" in old.text()


def test_the_end_of_the_rotation_window_closes_the_old_secrets_connections(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    _tunnel, new, _old = _two_connectors(processes, account, origin, tmp_path)
    with SteadyLoad(edge, HOST, rate=20) as load:
        _rotate(account, new, edge, "--deadline", "4s")
        rotated = time.monotonic()
        time.sleep(7.0)
    after = _served_by(load, rotated + 5.5, rotated + 7.0)
    assert after and set(after) == {200}, f"after the window: {after}"
    assert LOCKED_OUT in edge.proc.text()
    _assert_refused_without_spinning(edge)
