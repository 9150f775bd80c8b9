"""``adit tunnel diag``: a zip of what support needs from a running connector, and no secret.

cloudflared's procedure (diagnostic/diagnostic.go ``RunDiagnostic``), with adit's files:

1. Find the connector: ``--metrics ADDR``, else ask each of localhost:20241..20245 for
   ``/diag/tunnel``. None answering is "No instances found", several is "Found multiple
   instances running" with each one's ids and address; both exit 0, as cloudflared's do.
2. Run the jobs, each into its own file, each failing alone: ``tunnelstate.json``
   (``/diag/tunnel``), ``systeminformation.json`` (``/diag/system``), ``runtime.json``
   (``/diag/runtime``; cloudflared's goroutine and heap pprof), ``metrics.txt``,
   ``adit_logs.txt`` (the connector's ``--logfile``, else its ``--log-directory``, else
   ``journalctl -u adit.service`` when that unit exists), ``network.json``
   (:mod:`adit.cli.diag_network`), ``cli-configuration.json`` (``/diag/configuration``) and
   ``configuration.json`` (``/config``), then ``task-result.json`` saying how each went.
3. Zip them as ``adit-diag-<RFC 3339 time, ':' as '-'>.zip`` in the current directory
   (mode 0600: logs name hosts and addresses) and say "Diagnostic completed", or "Diagnostic
   completed with one or more errors". The exit status is 0 either way.

Secrets: the connector's endpoints never serve one (``adit.supervisor.diag_endpoints``), and
diag masks any secret-named key in the JSON it copies all the same (:func:`redact`: a
connector of another version, or cloudflared, may serve one); the logs are the connector's
own, which mask the token and credentials contents.

``--diag-container-id``/``--diag-pod-id`` are accepted and answered with one line: adit does
not reach into Docker or Kubernetes; run ``adit tunnel diag`` inside the container instead.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from adit.cli.metrics_client import KNOWN_METRICS_ADDRESSES, MetricsUnreachable, base_address, get
from adit.cli.state import cli_state
from adit.logs import LogSettings, configure_logging

__all__ = ["diag", "zip_name"]

log = logging.getLogger("adit.cli")

_TIMEOUT = 15.0
_JOURNAL_TIMEOUT = 60.0
_LOG_NAME = "adit_logs.txt"
_SERVICE_UNIT = "adit.service"
_UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
              "/lib/systemd/system")  # fmt: skip
_PORT_FORWARD_HINT = (
    "If your instance is running in a Docker/Kubernetes environment you need to setup port "
    "forwarding for your application."
)
_LOGS_HINT = (
    "Couldn't extract logs from the instance. Start the connector with --logfile or "
    "--log-directory (or as adit.service, whose logs journald keeps); if there is no logging "
    "configuration use --no-diag-logs."
)


class DiagError(Exception):
    """One job failed; the message goes to ``task-result.json``."""


class LogConfigurationInvalid(DiagError):
    """The connector logs nowhere diag can read (cloudflared's ``ErrLogConfigurationIsInvalid``)."""


@dataclass
class Instance:
    """A connector found on a metrics address, with its ``/diag/tunnel`` answer."""

    address: str
    state: dict[str, Any]


def zip_name(now: datetime.datetime) -> str:
    """``adit-diag-<time>.zip``: Go's RFC 3339 (``Z`` for UTC) with ``:`` made ``-``."""
    stamp = now.isoformat(timespec="seconds")
    if now.utcoffset() == datetime.timedelta(0):
        stamp = stamp.removesuffix("+00:00") + "Z"
    return f"adit-diag-{stamp}.zip".replace(":", "-")


def _get_json(address: str, path: str) -> Any:
    try:
        response = get(address, path, timeout=_TIMEOUT)
    except MetricsUnreachable as exc:
        raise DiagError(str(exc)) from None
    if response.status != 200:
        raise DiagError(f"GET {path} answered {response.status}")
    try:
        return json.loads(response.body)
    except ValueError as exc:
        raise DiagError(f"GET {path} answered something that is not JSON: {exc}") from None


def find_instances(addresses: tuple[str, ...]) -> list[Instance]:
    """The connectors answering ``/diag/tunnel`` among ``addresses``."""
    found: list[Instance] = []
    for address in addresses:
        try:
            state = _get_json(address, "/diag/tunnel")
        except DiagError as exc:
            log.debug("error getting tunnel state from address %s: %s", address, exc)
            continue
        if isinstance(state, dict):
            found.append(Instance(address, state))
    return found


def _write_json(path: Path, body: object) -> None:
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def _unit_exists() -> bool:
    return any(Path(d, _SERVICE_UNIT).exists() for d in _UNIT_DIRS)


def collect_logs(flags: dict[str, Any], out: Path) -> None:
    """The connector's logs into ``out`` (see the module docstring for where from)."""
    logfile = flags.get("logfile")
    directory = flags.get("log-directory")
    try:
        if logfile:
            shutil.copyfile(str(logfile), out)
            return
        if directory:
            # Oldest first: the rotated adit.log.N before the live adit.log.
            files = sorted(
                (p for p in Path(str(directory)).iterdir() if p.is_file()),
                key=lambda p: p.stat().st_mtime,
            )
            with out.open("wb") as sink:
                for file in files:
                    with file.open("rb") as source:
                        shutil.copyfileobj(source, sink)
            return
    except OSError as exc:
        raise DiagError(f"error collecting logs: {exc}") from None
    if _unit_exists() and shutil.which("journalctl"):
        argv = ["journalctl", "--since", "2 weeks ago", "-u", _SERVICE_UNIT, "--no-pager"]
        try:
            with out.open("wb") as sink:
                subprocess.run(
                    argv, stdout=sink, stderr=subprocess.STDOUT, timeout=_JOURNAL_TIMEOUT,
                    check=True, stdin=subprocess.DEVNULL,
                )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise DiagError(f"error running command '{' '.join(argv)}': {exc}") from None
        return
    raise LogConfigurationInvalid("provided log configuration is invalid")


@dataclass
class Job:
    """One collection: its name (cloudflared's job names), its file, how and whether to run."""

    name: str
    filename: str
    run: Callable[[Path], None]
    bypass: bool = False


#: A key naming a secret (any JSON the bundle copies): its value is masked by diag too.
_SECRET_KEY = re.compile(r"token|secret|password|credentials-contents|private", re.IGNORECASE)
_NOT_SECRET_KEYS = frozenset({"token-file", "tokenFile"})


def redact(value: Any) -> Any:
    """``value`` with the value of every secret-named key masked, at any depth.

    The connector's endpoints serve no secret already; this is the second lock, for a
    connector of another version (or cloudflared) that serves one by mistake.
    """
    if isinstance(value, dict):
        return {
            k: "*****"
            if _SECRET_KEY.search(str(k)) and k not in _NOT_SECRET_KEYS and v not in ("", None)
            else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _copy_endpoint(address: str, path: str) -> Callable[[Path], None]:
    def run(out: Path) -> None:
        _write_json(out, redact(_get_json(address, path)))

    return run


def _copy_metrics(address: str) -> Callable[[Path], None]:
    def run(out: Path) -> None:
        try:
            response = get(address, "/metrics", timeout=_TIMEOUT)
        except MetricsUnreachable as exc:
            raise DiagError(str(exc)) from None
        if response.status != 200:
            raise DiagError(f"GET /metrics answered {response.status}")
        out.write_bytes(response.body)

    return run


#: The edge's tunnel port when nothing better is known.
_EDGE_PORT = 7844


def _flag_edges(flags: object) -> list[str]:
    """``--edge`` values in ``/diag/configuration``: adit's ``a, b``, cloudflared's ``[a b]``."""
    if not isinstance(flags, dict) or not flags.get("edge"):
        return []
    return [a for a in re.split(r"[\s,]+", str(flags["edge"]).strip("[]")) if a]


def edge_addresses(state: dict[str, Any], flags: object) -> list[str]:
    """``host:port`` of each edge the connector uses.

    adit's ``/diag/tunnel`` names them (``edgeAddresses``, each connection's ``edge``).
    cloudflared's gives only each connection's IP: then the ``--edge`` flag's addresses, or
    else each IP at port 7844 (the port of Cloudflare's edge).
    """
    addresses = [str(a) for a in state.get("edgeAddresses") or []]
    ips: list[str] = []
    for connection in state.get("connections") or []:
        if not isinstance(connection, dict):
            continue
        if connection.get("edge"):
            addresses.append(str(connection["edge"]))
        elif connection.get("edgeAddress"):
            ips.append(str(connection["edgeAddress"]))
    if addresses:
        return addresses
    from_flags = _flag_edges(flags)
    if from_flags:
        return from_flags
    return [f"[{ip}]:{_EDGE_PORT}" if ":" in ip else f"{ip}:{_EDGE_PORT}" for ip in ips]


@dataclass
class Toggles:
    """The ``--no-diag-*`` flags."""

    logs: bool
    metrics: bool
    system: bool
    runtime: bool
    network: bool


def create_jobs(address: str, tunnel: dict[str, Any] | None, toggles: Toggles) -> list[Job]:
    """The jobs in cloudflared's order; ``tunnel`` is the state found while probing."""
    known: dict[str, Any] = {}

    def tunnel_state(out: Path) -> None:
        known.update(tunnel if tunnel is not None else _get_json(address, "/diag/tunnel"))
        _write_json(out, redact(known))

    def logs(out: Path) -> None:
        flags = _get_json(address, "/diag/configuration")
        if not isinstance(flags, dict) or "uid" not in flags:
            raise DiagError("error getting log configuration: key not found")
        collect_logs(flags, out)

    def network(out: Path) -> None:
        from adit.cli.diag_network import check_edges

        try:
            flags = _get_json(address, "/diag/configuration")
        except DiagError:
            flags = None
        addresses = edge_addresses(known, flags) if known else []
        if not addresses:
            raise DiagError("no edge address known: the tunnel state could not be read")
        report, ok = check_edges(addresses)
        _write_json(out, report)
        if not ok:
            raise DiagError("an edge address failed its TCP or TLS check (see network.json)")

    return [
        Job("tunnel state", "tunnelstate.json", tunnel_state),
        Job("system information", "systeminformation.json",
            _copy_endpoint(address, "/diag/system"), toggles.system),
        Job("runtime information", "runtime.json",
            _copy_endpoint(address, "/diag/runtime"), toggles.runtime),
        Job("metrics", "metrics.txt", _copy_metrics(address), toggles.metrics),
        Job("log information", _LOG_NAME, logs, toggles.logs),
        Job("network information", "network.json", network, toggles.network),
        Job("cli configuration", "cli-configuration.json",
            _copy_endpoint(address, "/diag/configuration")),
        Job("configuration", "configuration.json", _copy_endpoint(address, "/config")),
    ]  # fmt: skip


def run_jobs(jobs: list[Job], workdir: Path) -> tuple[dict[str, dict[str, str]], list[Path], bool]:
    """Run each job; the task report, the files written and whether logs were unfindable."""
    report: dict[str, dict[str, str]] = {}
    written: list[Path] = []
    logs_invalid = False
    for job in jobs:
        if job.bypass:
            continue
        log.info("Collecting %s...", job.name)
        out = workdir / job.filename
        try:
            job.run(out)
        except DiagError as exc:
            logs_invalid = logs_invalid or isinstance(exc, LogConfigurationInvalid)
            report[job.name] = {"result": "failure", "error": str(exc)}
            log.error("Job: %s finished with error. error=%s", job.name, exc)
        except Exception as exc:  # one job's bug must not lose the others
            report[job.name] = {"result": "failure", "error": f"{type(exc).__name__}: {exc}"}
            log.error("Job: %s finished with error. error=%s", job.name, exc)
        else:
            report[job.name] = {"result": "success"}
            log.info("Collected %s.", job.name)
        if out.exists():
            written.append(out)
    task_result = workdir / "task-result.json"
    _write_json(task_result, report)
    written.append(task_result)
    return report, written, logs_invalid


def write_zip(files: list[Path], name: str) -> Path:
    """The bundle in the current directory, 0600, each file at its base name."""
    target = Path.cwd() / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as bundle:
        for file in files:
            bundle.write(file, file.name)
    return target


def _report_instances(instances: list[Instance]) -> None:
    log.info("Found multiple instances running:")
    for instance in instances:
        log.info(
            "Instance: tunnel-id=%s connector-id=%s metrics-address=http://%s",
            instance.state.get("tunnelID", ""),
            instance.state.get("connectorID", ""),
            instance.address,
        )
    log.info("To select one instance use the option --metrics")


def run_diagnostic(address: str | None, toggles: Toggles) -> None:
    """The whole procedure (see the module docstring); logs its outcome, never raises."""
    tunnel: dict[str, Any] | None = None
    if address is None:
        log.info(_PORT_FORWARD_HINT)
        instances = find_instances(KNOWN_METRICS_ADDRESSES)
        if not instances:
            log.warning("No instances found")
            return
        if len(instances) > 1:
            _report_instances(instances)
            return
        address, tunnel = instances[0].address, instances[0].state
    address = base_address(address)
    log.info("Selected server http://%s starting diagnostic...", address)
    with tempfile.TemporaryDirectory(prefix="adit-diag-") as tmp:
        report, files, logs_invalid = run_jobs(create_jobs(address, tunnel, toggles), Path(tmp))
        name = zip_name(datetime.datetime.now().astimezone())
        try:
            written = write_zip(files, name)
        except OSError as exc:
            log.error("error creating file %s: %s", name, exc)
            log.warning("Diagnostic completed with one or more errors")
            return
    log.info("Diagnostic file written: %s", written.name)
    if logs_invalid:
        log.info(_LOGS_HINT)
    if any(r["result"] != "success" for r in report.values()):
        log.warning("Diagnostic completed with one or more errors")
    else:
        log.info("Diagnostic completed")


@click.command("diag")
@click.option(
    "--metrics",
    default=None,
    help="The metrics server address i.e.: 127.0.0.1:12345 "
    "(default: the one connector found on localhost:20241..20245).",
)
@click.option(
    "--diag-container-id",
    default=None,
    help="Accepted; adit does not collect from containers (run diag inside it).",
)
@click.option(
    "--diag-pod-id",
    default=None,
    help="Accepted; adit does not collect from pods (run diag inside it).",
)
@click.option("--no-diag-logs", is_flag=True, help="Log collection will not be performed.")
@click.option("--no-diag-metrics", is_flag=True, help="Metric collection will not be performed.")
@click.option(
    "--no-diag-system", is_flag=True, help="System information collection will not be performed."
)
@click.option(
    "--no-diag-runtime", is_flag=True, help="Runtime information collection will not be performed."
)
@click.option("--no-diag-network", is_flag=True, help="Network diagnostics won't be performed.")
@click.pass_context
def diag(
    ctx: click.Context,
    metrics: str | None,
    diag_container_id: str | None,
    diag_pod_id: str | None,
    no_diag_logs: bool,
    no_diag_metrics: bool,
    no_diag_system: bool,
    no_diag_runtime: bool,
    no_diag_network: bool,
) -> None:
    """Create a diagnostic report (adit-diag-<time>.zip) of a local connector; no secrets.

    Collects the tunnel's connections, system and runtime information, metrics, logs, the
    connector's flags and configuration, and TCP/TLS/QUIC checks of each edge address.
    Since several connectors may run on one host, --metrics selects one. Always exits 0.
    """  # fmt: skip
    configure_logging(LogSettings())
    if diag_container_id or diag_pod_id:
        log.info(
            "--diag-container-id/--diag-pod-id: adit does not collect from containers or pods; "
            "run `adit tunnel diag` inside the container, or give --metrics of a forwarded port"
        )
    group_metrics = cli_state(ctx).extra.get("metrics")
    toggles = Toggles(
        logs=no_diag_logs,
        metrics=no_diag_metrics,
        system=no_diag_system,
        runtime=no_diag_runtime,
        network=no_diag_network,
    )
    run_diagnostic(metrics or (str(group_metrics) if group_metrics else None), toggles)
