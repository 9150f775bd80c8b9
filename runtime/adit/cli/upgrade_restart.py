"""``adit upgrade-restart``: have running adit units take up the installed version in place.

The package scripts call it after an upgrade instead of restarting (deb/postinst, the rpm
``%posttrans``, the pacman ``post_upgrade``). It sends SIGUSR2 to each unit's main process
(``systemctl kill -s USR2 --kill-whom=main``): the connector (``adit.service``) checks the
installed code and ``exec``\\ s it keeping its pid and its workers until the new ones
registered (``adit.supervisor.upgrade``); the edge (``adit-edge.service``) hands its listening
sockets to a new process and tells systemd its ``MAINPID=``. Then it waits, bounded, until
the unit runs the installed version, or says why not, and exits 0 or 1 with one line per unit.
A unit that refuses keeps serving its old version: the caller never restarts it.

What it waits on:

* the connector: its ``STATUS=`` (``systemctl show -p StatusText``) names the version it runs
  (``..., adit 2026.11.1``) and a refusal (``upgrade refused: REASON (refusal N)``);
* the edge: its main pid changes to the successor it started from the installed files;
* either: the unit's journal since the signal, for a refusal line (``Upgrade refused:``,
  ``hand-over ... failed:``, ``Ignored an upgrade request``).

``--pid``/``--pidfile`` (a connector not under systemd): the signal goes to that pid and the
connector's ``/upgrade`` on its metrics listener says its version and refusals
(``--metrics``, or the one of localhost:20241..20245 that answers with that pid).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import click

from adit.cli.metrics_client import KNOWN_METRICS_ADDRESSES, MetricsUnreachable, get
from adit.version import __version__

__all__ = ["DEFAULT_UNITS", "upgrade_restart"]

#: The units an upgrade concerns, in the order they are told.
DEFAULT_UNITS = ("adit.service", "adit-edge.service")
_STATUS_VERSION = re.compile(r"\badit (\d[^\s,;]*)")
_STATUS_REFUSAL = re.compile(r"upgrade refused: (.*) \(refusal (\d+)\)")
_JOURNAL_REFUSAL = re.compile(
    r"(Upgrade refused: .*|Ignored an upgrade request.*|hand-over .* failed: .*)"
)
#: Seconds between two looks at a unit.
_POLL = 0.5


class _Failed(Exception):
    """The unit did not take up the installed version; the message says why."""


@dataclass
class _Unit:
    state: str
    main_pid: int
    status: str


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, timeout=30, check=False
    )


def _show(unit: str) -> _Unit:
    done = _systemctl("show", unit, "-p", "ActiveState", "-p", "MainPID", "-p", "StatusText")
    if done.returncode != 0:
        raise _Failed(f"systemctl show failed: {done.stderr.strip() or done.returncode}")
    values = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    pid = values.get("MainPID", "0")
    return _Unit(
        values.get("ActiveState", ""),
        int(pid) if pid.isdigit() else 0,
        values.get("StatusText", ""),
    )


def _journal_refusal(unit: str, since: float) -> str | None:
    try:
        done = subprocess.run(
            ["journalctl", "-u", unit, f"--since=@{int(since)}", "-o", "cat", "-q", "--no-pager"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = _JOURNAL_REFUSAL.findall(done.stdout)
    return found[-1].strip() if found else None


def _catches_usr2(pid: int) -> bool:
    """Whether process ``pid`` handles SIGUSR2 (``SigCgt`` in ``/proc/PID/status``): one that
    does not would die of it. ``True`` when it cannot be told."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return True
    for line in text.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGUSR2 - 1) & 1)
    return True


class _Predates(_Failed):
    """The running process cannot take an upgrade in place (an adit from before SIGUSR2)."""


def _predates(what: str, restart: str) -> _Failed:
    return _Predates(
        f"the running {what} predates in-place upgrades (it does not handle SIGUSR2); it keeps "
        f"serving its version until restarted ({restart})"
    )


def _restart_older(unit: str) -> str:
    """``systemctl try-restart``: what the package scripts of a version without in-place
    upgrades did on every upgrade. Left running, such a process would start new workers (and a
    reload's parser) from the new files under its old code."""
    done = subprocess.run(
        ["systemctl", "try-restart", unit],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        reason = done.stderr.strip()
        raise _Failed(f"it predates in-place upgrades and its restart failed: {reason}")
    return f"{unit}: restarted (it predated in-place upgrades; the next upgrade is in place)"


def _is_edge(unit: str) -> bool:
    return unit.removesuffix(".service").startswith("adit-edge")


def _upgrade_unit(unit: str, timeout: float) -> str:
    """Signal ``unit`` and wait; the success line, or :class:`_Failed`."""
    before = _show(unit)
    if before.state != "active":
        return f"{unit}: not active ({before.state or 'unknown'}); nothing to upgrade"
    edge = _is_edge(unit)
    refusals = 0
    if before.main_pid and not _catches_usr2(before.main_pid):
        raise _predates("edge" if edge else "connector", f"systemctl restart {unit}")
    if not edge:
        running = _STATUS_VERSION.search(before.status)
        if running is None:
            raise _predates("connector", f"systemctl restart {unit}")
        if running.group(1) == __version__:
            return f"{unit}: already runs adit {__version__}"
        old = _STATUS_REFUSAL.search(before.status)
        refusals = int(old.group(2)) if old else 0
    since = time.time() - 1
    done = _systemctl("kill", "-s", "USR2", "--kill-whom=main", unit)
    if done.returncode != 0:
        raise _Failed(f"systemctl kill failed: {done.stderr.strip() or done.returncode}")
    deadline = time.monotonic() + timeout
    looks = 0
    while time.monotonic() < deadline:
        time.sleep(_POLL)
        looks += 1
        now = _show(unit)
        if now.state not in ("active", "reloading"):
            raise _Failed(f"the unit is {now.state} now; see journalctl -u {unit}")
        if edge:
            if now.state == "active" and now.main_pid not in (0, before.main_pid):
                return f"{unit}: handed over to adit {__version__} (pid {now.main_pid})"
        else:
            running = _STATUS_VERSION.search(now.status)
            if now.state == "active" and running and running.group(1) == __version__:
                return f"{unit}: upgraded in place to adit {__version__} (pid {now.main_pid})"
            refused = _STATUS_REFUSAL.search(now.status)
            if refused and int(refused.group(2)) > refusals:
                raise _Failed(f"upgrade refused: {refused.group(1)}")
        if looks % 4 == 0 and (reason := _journal_refusal(unit, since)) is not None:
            raise _Failed(reason)
    reason = _journal_refusal(unit, since)
    raise _Failed(reason or f"no upgrade within {timeout:g}s; see journalctl -u {unit}")


def _active_units() -> list[str]:
    return [
        unit for unit in DEFAULT_UNITS if _systemctl("is-active", "--quiet", unit).returncode == 0
    ]


# --- a connector not under systemd --------------------------------------------------------------


def _upgrade_state(address: str) -> dict[str, object]:
    response = get(address, "/upgrade", timeout=5.0)
    if response.status == 404:
        raise _Failed(
            f"the connector at {address} predates in-place upgrades (no /upgrade); it keeps "
            "serving until restarted"
        )
    if response.status != 200:
        raise _Failed(f"http://{address}/upgrade answered {response.status}")
    found: dict[str, object] = json.loads(response.body)
    return found


def _find_metrics(pid: int) -> str:
    for address in KNOWN_METRICS_ADDRESSES:
        try:
            if _upgrade_state(address).get("pid") == pid:
                return address
        except (MetricsUnreachable, _Failed, ValueError):
            continue
    raise _Failed(
        f"no connector with pid {pid} answers on {KNOWN_METRICS_ADDRESSES[0]}.."
        f"{KNOWN_METRICS_ADDRESSES[-1].rsplit(':', 1)[1]}; give its --metrics address"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _upgrade_pid(pid: int, metrics: str | None, timeout: float) -> str:
    if not _alive(pid):
        raise _Failed(f"no process {pid}")
    if not _catches_usr2(pid):
        raise _predates("connector", "stop it and start it again")
    address = metrics or _find_metrics(pid)
    before = _upgrade_state(address)
    if before.get("pid") != pid:
        raise _Failed(f"the connector at {address} has pid {before.get('pid')}, not {pid}")
    if before.get("version") == __version__:
        return f"pid {pid}: already runs adit {__version__}"
    failures = before.get("upgradeFailures", 0)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(_POLL)
        if not _alive(pid):
            raise _Failed(f"process {pid} exited")
        try:
            now = _upgrade_state(address)
        except (MetricsUnreachable, ValueError):
            continue  # the exec: the listener is back in a moment
        if now.get("version") == __version__:
            return f"pid {pid}: upgraded in place to adit {__version__}"
        count = now.get("upgradeFailures", 0)
        if isinstance(count, int) and isinstance(failures, int) and count > failures:
            raise _Failed(f"upgrade refused: {now.get('upgradeError')}")
    raise _Failed(f"no upgrade within {timeout:g}s (still adit {before.get('version')})")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


@click.command("upgrade-restart")
@click.argument("units", nargs=-1)
@click.option("--pid", type=int, default=None, help="Upgrade this connector process instead.")
@click.option(
    "--pidfile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Upgrade the connector whose pid this file holds (its --pidfile).",
)
@click.option(
    "--metrics",
    default=None,
    help="With --pid: the connector's metrics address (default: the one on "
    "localhost:20241..20245 with that pid).",
)
@click.option(
    "--restart-older",
    is_flag=True,
    help="Restart (systemctl try-restart) a unit whose running adit predates in-place "
    "upgrades, as the package scripts of that version did; without it such a unit is left "
    "running and reported.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for each unit.",
)
def upgrade_restart(
    units: tuple[str, ...],
    pid: int | None,
    pidfile: Path | None,
    metrics: str | None,
    restart_older: bool,
    timeout: float,
) -> None:
    """Have running adit units take up the installed version in place (SIGUSR2).

    UNIT defaults to the adit units that are active (adit.service, adit-edge.service). Exits 0
    once each runs the installed version, 1 with the reason when one does not: that one keeps
    serving its old version.
    """
    if pidfile is not None:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"--pidfile {pidfile}: no pid in it ({exc})") from None
    if pid is not None:
        if units:
            raise click.UsageError("give units or --pid/--pidfile, not both")
        try:
            click.echo(_upgrade_pid(pid, metrics, timeout))
        except (_Failed, MetricsUnreachable) as exc:
            click.echo(f"adit upgrade-restart: pid {pid}: {_one_line(exc)}", err=True)
            raise SystemExit(1) from None
        return
    chosen = list(units) or _active_units()
    if not chosen:
        click.echo("adit upgrade-restart: no adit unit is active; nothing to upgrade")
        return
    failed = False
    for unit in chosen:
        name = unit if "." in unit else f"{unit}.service"
        try:
            try:
                click.echo(_upgrade_unit(name, timeout))
            except _Predates:
                if not restart_older:
                    raise
                click.echo(_restart_older(name))
        except (_Failed, OSError, subprocess.SubprocessError) as exc:
            click.echo(f"adit upgrade-restart: {name}: {_one_line(exc)}", err=True)
            failed = True
    if failed:
        raise SystemExit(1)
