"""Everything the supervisor needs, resolved and validated by ``adit tunnel run`` beforehand."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from adit.ipc.messages import EdgeTarget, IngressSnapshot
from adit.logs import LogSettings
from adit.metrics_listener import DEFAULT_METRICS_ADDRESS
from adit.version import __version__

__all__ = ["DEFAULT_METRICS_ADDRESS", "SupervisorSettings"]

#: cloudflared's ``--metrics`` default: try 20241..20245 on localhost, then a random port.


def _new_connector_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class SupervisorSettings:
    """A validated, immutable description of one connector run."""

    tunnel_id: str
    account_tag: str
    tunnel_secret: bytes = field(repr=False)
    #: The edge's tunnel listener addresses; each HA connection dials one of them.
    edges: tuple[EdgeTarget, ...]
    #: PEM of the CA of the edge's tunnel certificate ("" = system roots).
    edge_ca_pem: str = field(default="", repr=False)
    ingress: IngressSnapshot = field(default_factory=lambda: IngressSnapshot(version=0))
    #: Edge connections to hold (already capped at ``len(edges)``).
    ha_connections: int = 4
    #: Worker processes; connection ``i`` is served by worker ``i % workers``.
    workers: int = 1
    #: Seconds in-flight streams get to finish after SIGTERM/SIGINT.
    grace_period: float = 30.0
    retries: int = 5
    #: ``auto``, ``quic`` or ``http2``, as ``adit.cli.run.resolve_protocol`` left it.
    protocol: str = "http2"
    #: cloudflared's ``--max-edge-addr-retries``: dial errors before a protocol fallback.
    max_edge_addr_retries: int = 8
    #: ``--post-quantum``: QUIC's key exchange is X25519MLKEM768 only.
    post_quantum: bool = False
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    #: Written with the PID (no newline) after the first registration.
    pidfile: str | None = None
    log: LogSettings = field(default_factory=LogSettings)
    #: ``--tag KEY=VALUE`` pairs, sent to origins as ``Cf-Warp-Tag-KEY``.
    tags: dict[str, str] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    #: ``--max-active-flows``: UDP flows a worker serves at once (0: no limit).
    max_active_flows: int = 0
    #: ``--label``: the connector's name in ``tail``'s host details (else the OS hostname).
    label: str = ""
    #: ``--management-hostname``: the Host of ``tail``'s requests, served ahead of the ingress.
    management_hostname: str = "management.argotunnel.com"
    #: ``--management-diagnostics``: ``/metrics`` over the management hostname (for ``tail``
    #: users holding an admin token); off, it answers 404 as cloudflared's does.
    management_diagnostics: bool = True
    #: Pin worker ``i`` to the ``i``-th CPU this process may run on (when there are enough).
    pin_cpus: bool = True
    #: One random UUID per supervisor (cloudflared's connector id).
    connector_id: str = field(default_factory=_new_connector_id)
    #: Extra seconds past the grace period before workers still draining are killed.
    drain_margin: float = 5.0
    version: str = __version__
    #: Seconds without a heartbeat after which a worker counts as stuck (SIGABRT, SIGKILL).
    worker_timeout: float = 10.0
    #: The config file the settings came from (named in reload errors).
    config_path: str | None = None
    #: The credentials (or token) file; a change of its mtime triggers a reload.
    credentials_path: str | None = None
    #: The flags as given (command line, environment or file), secret values masked, as
    #: strings: ``/diag/configuration`` serves them to ``adit tunnel diag``.
    cli_flags: dict[str, str] = field(default_factory=dict)
    #: The quick tunnel's URL (``/quicktunnel``, ``user_hostnames_counts``); "" otherwise.
    quick_tunnel_url: str = ""

    @property
    def initial_protocol(self) -> str:
        """The protocol connections start with: ``auto`` starts with QUIC
        (connection/protocol.go:251-255), the others are themselves."""
        return "http2" if self.protocol == "http2" else "quic"
