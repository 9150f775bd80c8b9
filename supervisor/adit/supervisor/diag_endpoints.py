"""The ``/diag/*`` endpoints of the metrics listener, read by ``adit tunnel diag``.

cloudflared serves ``/diag/tunnel`` (tunnel and connector ids, the connection tracker),
``/diag/configuration`` (an allow-list of non-secret CLI flags plus the uid) and
``/diag/system`` (memory, file descriptors, OS, disks) on its metrics listener
(diagnostic/handlers.go). adit serves the same three in the same shapes, plus
``/diag/runtime`` in place of Go's pprof dumps: per worker its pid, CPU, RSS and the event
loop's lag.

Nothing here carries a secret: the settings' secret fields (tunnel secret, account tag, edge
CA) are never read, and the flags come from ``SupervisorSettings.cli_flags``, which
``adit tunnel run`` built with the secret flags already masked. The listener itself defaults
to localhost (``metrics_server``).

The shapes are cloudflared's, so that cloudflared's own ``tunnel diag`` can read an adit
connector: a connection's ``protocol`` is Go's enum number (0 HTTP/2, 1 QUIC). Additions (Go's
decoder ignores them): ``protocolName``, each connection's edge as ``host:port``, its location,
connection id and the pid of the worker holding it, the configured edge addresses. Unlike Go's
``omitempty``, every field is always present (Go drops index 0 and protocol HTTP/2).
"""

from __future__ import annotations

import json
import os
import platform
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from adit.version import __version__

if TYPE_CHECKING:
    from adit.supervisor.state import SupervisorState

__all__ = ["DiagRoute", "diag_routes"]

#: A route's content type and body (computed per request).
DiagRoute = Callable[[], tuple[str, bytes]]

_JSON = "application/json"
#: cloudflared's ``connection.Protocol`` numbers.
_PROTOCOL_NUMBERS = {"http2": 0, "quic": 1}
#: Disks listed in ``/diag/system`` at most (a host with hundreds of mounts stays readable).
_MAX_DISKS = 32


def _encode(body: object) -> tuple[str, bytes]:
    return _JSON, json.dumps(body, separators=(",", ":")).encode() + b"\n"


def tunnel_state(state: SupervisorState) -> dict[str, object]:
    """``/diag/tunnel``: ids, one entry per connection index ever registered, the edges."""
    settings = state.settings
    connections: list[dict[str, object]] = []
    for index in sorted(set(state.protocols) | set(state.registered)):
        event = state.registered.get(index)
        protocol = event.protocol if event is not None else state.protocols[index]
        entry: dict[str, object] = {
            "index": index,
            "isConnected": event is not None and state.ready_connections > 0,
            "protocol": _PROTOCOL_NUMBERS.get(protocol, 0),
            "protocolName": protocol,
        }
        if event is not None:
            host, _, _port = event.edge.rpartition(":")
            worker = state.workers.get(event.slot)
            entry |= {
                "edgeAddress": host.strip("[]") or event.edge,
                "edge": event.edge,
                "location": event.location,
                "connectionId": event.connection_id,
                "workerPid": worker.pid if worker is not None else None,
            }
        connections.append(entry)
    return {
        "tunnelID": settings.tunnel_id,
        "connectorID": settings.connector_id,
        "connections": connections,
        "edgeAddresses": [_join(edge.host, edge.port) for edge in settings.edges],
        "pid": os.getpid(),
    }


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cli_configuration(state: SupervisorState) -> dict[str, str]:
    """``/diag/configuration``: the flags as given (secrets masked) and the uid, as strings.

    ``adit tunnel diag`` reads ``logfile``/``log-directory`` and ``uid`` from here to find
    the logs, as cloudflared's ``GetLogConfiguration`` does.
    """
    flags = dict(state.settings.cli_flags)
    log = state.settings.log
    # Absolute, as cloudflared makes them: diag may run from another directory.
    if log.logfile:
        flags["logfile"] = os.path.abspath(os.path.expanduser(log.logfile))
    if log.log_directory:
        flags["log-directory"] = os.path.abspath(os.path.expanduser(log.log_directory))
    flags["uid"] = str(os.getuid())
    return flags


def system_information() -> dict[str, object]:
    """``/diag/system``: cloudflared's ``SystemInformationResponse`` (``info``, ``errors``).

    It runs on the supervisor's loop, so it reads only what answers at once: ``/proc`` and
    the local disks (``disk_partitions(all=False)`` leaves out ``nodev`` file systems, so an
    NFS or CIFS mount that hangs is never asked).
    """
    import psutil

    errors: dict[str, dict[str, str]] = {}
    info: dict[str, object] = {
        "osSystem": platform.system().lower(),
        "hostName": socket.gethostname(),
        "osVersion": platform.version(),
        "osRelease": platform.release(),
        "architecture": platform.machine(),
        "aditVersion": __version__,
        "pythonVersion": platform.python_version(),
    }
    try:
        memory = psutil.virtual_memory()
        info["memoryMaximum"] = memory.total // 1024
        info["memoryCurrent"] = (memory.total - memory.available) // 1024
    except (OSError, psutil.Error) as exc:
        errors["memoryInformationError"] = {"error": str(exc), "rawInfo": ""}
    try:
        with open("/proc/sys/fs/file-nr", encoding="ascii") as handle:
            raw = handle.read()
        current, _unused, maximum = (int(x) for x in raw.split()[:3])
        info["fileDescriptorMaximum"] = maximum
        info["fileDescriptorCurrent"] = current
    except (OSError, ValueError) as exc:
        errors["fileDescriptorsInformationError"] = {"error": str(exc), "rawInfo": ""}
    disks: list[dict[str, object]] = []
    try:
        for part in psutil.disk_partitions(all=False)[:_MAX_DISKS]:
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            disks.append(
                {
                    "name": part.device,
                    "sizeMaximum": usage.total // 1024,
                    "sizeCurrent": usage.used // 1024,
                }
            )
        info["disk"] = disks
    except (OSError, psutil.Error) as exc:
        errors["diskVolumeInformationError"] = {"error": str(exc), "rawInfo": ""}
    return {"info": info, "errors": errors or None}


def runtime_information(state: SupervisorState) -> dict[str, object]:
    """``/diag/runtime``: the supervisor and each worker slot (adit's pprof stand-in)."""
    import psutil

    def process(pid: int | None) -> dict[str, object]:
        if pid is None:
            return {}
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                return {
                    "rssBytes": proc.memory_info().rss,
                    "threads": proc.num_threads(),
                    "cpuTimes": proc.cpu_times().user + proc.cpu_times().system,
                    "openFiles": proc.num_fds(),
                }
        except (psutil.Error, OSError):
            return {}

    workers = [
        {
            "slot": w.slot,
            "pid": w.pid,
            "cpu": w.cpu,
            "connIndexes": list(w.conn_indexes),
            "restarts": w.restarts,
            "loopLagSeconds": w.loop_lag,
            "activeStreams": w.active_streams,
            **process(w.pid),
        }
        for w in state.workers.values()
    ]
    return {
        "phase": state.phase.name.lower(),
        "supervisor": {"pid": os.getpid(), **process(os.getpid())},
        "workers": workers,
    }


def diag_routes(state: SupervisorState) -> dict[str, DiagRoute]:
    """The ``/diag/*`` routes for :class:`adit.metrics_listener.MetricsServer`."""
    return {
        "/diag/tunnel": lambda: _encode(tunnel_state(state)),
        "/diag/configuration": lambda: _encode(cli_configuration(state)),
        "/diag/system": lambda: _encode(system_information()),
        "/diag/runtime": lambda: _encode(runtime_information(state)),
    }
