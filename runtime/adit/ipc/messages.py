"""Typed messages between the supervisor and its workers (msgspec, tagged unions).

Commands flow down (supervisor → worker), events flow up (worker → supervisor). Both are
encoded with msgpack; every struct is frozen so a received snapshot can be shared safely.
"""

from __future__ import annotations

from typing import BinaryIO

import msgspec

__all__ = [
    "ApplyIngress",
    "Command",
    "ConnectionLost",
    "ConnectionRegistered",
    "ConnectionUnregistered",
    "ConnectorCounters",
    "Drain",
    "EdgeTarget",
    "Event",
    "Heartbeat",
    "HistogramCounts",
    "IngressSnapshot",
    "QuicClientStats",
    "QuicConnectionStats",
    "Reconfigure",
    "RecordRegistration",
    "RegistrationRefused",
    "RemoteConfigReceived",
    "RpcCalls",
    "Start",
    "StatsSnapshot",
    "UdpStats",
    "WorkerBoot",
    "WorkerSettings",
    "decode_boot",
    "decode_command",
    "decode_event",
    "encode",
    "frame",
    "read_frame",
]


class EdgeTarget(msgspec.Struct, frozen=True):
    """One edge address a connection dials, and the location group it belongs to."""

    host: str
    port: int
    location: int = 0


class IngressSnapshot(msgspec.Struct, frozen=True):
    """A versioned ingress config: raw rules (as in config.yml) re-validated by each worker.

    ``rules`` and ``origin_request`` are the plain JSON-compatible forms of ``ingress`` and
    ``originRequest``; ``cli_url`` etc. describe the single-origin mode when ``rules`` is empty.
    """

    version: int
    rules: list[dict[str, object]] = []
    origin_request: dict[str, object] = {}
    cli_url: str | None = None
    cli_hello_world: bool = False
    cli_unix_socket: str | None = None
    cli_bastion: bool = False
    #: The config.yml contents sent to the edge by updateLocalConfiguration (JSON bytes).
    local_config_json: bytes = b""
    #: The edge's version of ``remote_config`` (-1: none applied, cloudflared's start).
    remote_version: int = -1
    #: A remotely managed configuration pushed by the edge (its JSON: ``ingress``,
    #: ``originRequest``, ``warp-routing``); when set it is the ingress, whatever the above
    #: (as cloudflared's orchestrator, the edge's version replaces the local ingress).
    remote_config: bytes = b""


class WorkerSettings(msgspec.Struct, frozen=True):
    """Everything a worker needs to serve its share of the HA connections."""

    slot: int
    connector_id: str  # UUID string, one per supervisor (cloudflared's connector id)
    account_tag: str
    tunnel_secret: bytes
    tunnel_id: str
    conn_indexes: list[int]
    edges: list[EdgeTarget]
    edge_ca_pem: str  # "" = system roots
    ingress: IngressSnapshot
    grace_period: float = 30.0
    retries: int = 5
    loglevel: str = "info"
    tags: dict[str, str] = {}
    features: list[str] = []
    version: str = ""
    #: Connector 0 of a locally managed tunnel pushes its config once registered.
    push_local_config: bool = True
    #: Connections of the whole connector (all workers; 0 = unknown): which edge addresses
    #: belong to other workers' connections, so a failing connection never takes one.
    ha_connections: int = 0
    #: ``auto``, ``quic`` or ``http2`` (``adit.workers.protocol_choice``).
    protocol: str = "http2"
    #: Dial errors of a connection before it may fall back from QUIC (cloudflared's
    #: ``--max-edge-addr-retries``).
    max_edge_addr_retries: int = 8
    #: ``--post-quantum``: the QUIC key exchange is X25519MLKEM768 only (else preferred).
    post_quantum: bool = False
    #: ``--max-active-flows``: private-network UDP flows served at once (0: no limit).
    max_active_flows: int = 0
    #: ``--label``: what ``/host_details`` calls this connector (``custom:<label>``).
    label: str = ""
    #: ``--management-hostname`` and ``--management-diagnostics`` (``adit.workers.management``).
    management_hostname: str = "management.argotunnel.com"
    management_diagnostics: bool = True


class Start(msgspec.Struct, frozen=True, tag=True):
    """First command to a worker: its settings."""

    settings: WorkerSettings


class Drain(msgspec.Struct, frozen=True, tag=True):
    """Unregister every connection, finish in-flight streams within ``grace`` seconds, exit."""

    grace: float


class Reconfigure(msgspec.Struct, frozen=True, tag=True):
    """New settings for a running worker (credentials, edge addresses, ingress...).

    Connections are re-registered one at a time, each replacement before the old one drains.
    """

    settings: WorkerSettings


class ApplyIngress(msgspec.Struct, frozen=True, tag=True):
    """Swap the ingress rules (and origin settings) live; stale versions are ignored."""

    snapshot: IngressSnapshot
    #: The log level to switch to ("" = unchanged).
    loglevel: str = ""


class RecordRegistration(msgspec.Struct, frozen=True, tag=True):
    """Connection ``conn_index`` registered over ``protocol`` (``http2`` or ``quic``).

    Relayed to every worker: cloudflared holds back a protocol fallback while any of its
    connections is registered over the current protocol, and starts its other connections
    with the protocol connection 0 registered with (``adit.workers.protocol_choice``).
    """

    conn_index: int
    protocol: str


Command = Start | Drain | Reconfigure | ApplyIngress | RecordRegistration


class WorkerBoot(msgspec.Struct, frozen=True):
    """What a worker process reads from its stdin (then closed) before it does anything else.

    A worker may be started before its settings exist (``adit tunnel run`` starts worker 0
    while it still reads its config), so nothing that depends on them is on its command line.
    """

    start: Start
    #: The CPU to pin the worker to (``None``: not pinned).
    cpu: int | None = None
    loglevel: str = "info"
    output: str = "default"
    logfile: str | None = None
    log_directory: str | None = None


class ConnectionRegistered(msgspec.Struct, frozen=True, tag=True):
    """The edge accepted ``registerConnection`` for this connection index."""

    slot: int
    conn_index: int
    connection_id: str
    location: str
    edge: str
    #: The transport it registered over: ``http2`` or ``quic``.
    protocol: str = "http2"


class RegistrationRefused(msgspec.Struct, frozen=True, tag=True):
    """The edge refused registration (wrong secret, unknown tunnel, ...).

    ``should_retry`` false: the connection stops until new settings arrive (a permanent
    refusal); otherwise the worker dials again in ``retry_in`` seconds. ``metric_label`` is
    the refusal's ``cloudflared_tunnel_tunnel_register_fail`` label.
    """

    slot: int
    conn_index: int
    cause: str
    should_retry: bool
    retry_in: float = 0.0
    metric_label: str = "server_error"


class ConnectionLost(msgspec.Struct, frozen=True, tag=True):
    """A connection failed or closed; the worker retries it with backoff."""

    slot: int
    conn_index: int
    error: str
    retry_in: float


class ConnectionUnregistered(msgspec.Struct, frozen=True, tag=True):
    """A connection unregistered during drain."""

    slot: int
    conn_index: int


class QuicConnectionStats(msgspec.Struct, frozen=True):
    """cloudflared's ``quic_client_*`` series of one connection index in one worker.

    Counters add up every QUIC connection the index had in this worker; the gauges are those
    of its latest (``None``: not measured yet)."""

    conn_index: int
    #: Frames by cloudflared's ``frame_type`` label.
    sent_frames: dict[str, int] = {}
    received_frames: dict[str, int] = {}
    sent_bytes: int = 0
    receive_bytes: int = 0
    #: Lost packets by ``reason``.
    lost_packets: dict[str, int] = {}
    #: Bytes of dropped packets as ``(packet_type, reason, bytes)``.
    dropped_packets: list[tuple[str, str, int]] = []
    max_udp_payload: int | None = None
    min_rtt_ms: int | None = None
    latest_rtt_ms: int | None = None
    smoothed_rtt_ms: int | None = None
    mtu: int | None = None
    congestion_window: int | None = None
    congestion_state: int | None = None


class QuicClientStats(msgspec.Struct, frozen=True):
    """A worker's QUIC client telemetry (present once it dialled QUIC)."""

    #: QUIC connections started (dials) and ended, whatever the outcome.
    total_connections: int
    closed_connections: int
    connections: list[QuicConnectionStats] = []


class UdpStats(msgspec.Struct, frozen=True):
    """One worker's private-network UDP counters (cloudflared_udp_*): datagram v2 sessions;
    v3 flows by connection index; dropped datagrams by connection index and reason."""

    active_sessions: int = 0
    total_sessions: int = 0
    active_flows: dict[int, int] = {}
    total_flows: dict[int, int] = {}
    failed_flows: dict[int, int] = {}
    dropped_datagrams: dict[int, dict[str, int]] = {}
    #: v3 registrations answered again, by connection index.
    retry_flow_responses: dict[int, int] = {}
    #: Session RPCs a v3 connection does not serve, by connection index and command.
    unsupported_remote_commands: dict[int, dict[str, int]] = {}


class HistogramCounts(msgspec.Struct, frozen=True):
    """A histogram's state: observations per bucket (not cumulative; the last is +Inf), their
    sum and count. The bucket bounds are fixed by the family (``adit.workers.telemetry``)."""

    buckets: list[int]
    total: float = 0.0
    count: int = 0


class RpcCalls(msgspec.Struct, frozen=True):
    """cloudflared's ``cloudflared_rpc_{client,server}_*`` series of one ``handler``/``method``."""

    handler: str
    method: str
    operations: int = 0
    failures: int = 0
    latency: HistogramCounts | None = None


class ConnectorCounters(msgspec.Struct, frozen=True):
    """One worker's counters behind cloudflared's ``cloudflared_tcp_*``, ``cloudflared_proxy_*``,
    ``cloudflared_config_local_config_pushes*``, ``cloudflared_rpc_*`` and
    ``flow_client_registrations_rate_limited_total`` families."""

    tcp_active_sessions: int = 0
    tcp_total_sessions: int = 0
    connect_latency: HistogramCounts | None = None
    connect_stream_errors: int = 0
    local_config_pushes: int = 0
    local_config_push_errors: int = 0
    rpc_client: list[RpcCalls] = []
    #: RPCs the edge called on this worker (over QUIC: UDP sessions, configuration).
    rpc_server: list[RpcCalls] = []
    #: Flows refused by ``--max-active-flows``, by cloudflared's ``flow_type``.
    flows_rate_limited: dict[str, int] = {}


class StatsSnapshot(msgspec.Struct, frozen=True, tag=True):
    """Cumulative proxy counters of one worker, pushed periodically."""

    slot: int
    total_requests: int
    request_errors: int
    concurrent_requests: int
    responses_by_code: dict[str, int]
    #: None until the worker dialled QUIC (UDP sessions exist only there).
    udp: UdpStats | None = None
    #: ``None`` until the worker dialled QUIC (cloudflared registers its quic_client_*
    #: families at the first QUIC dial).
    quic: QuicClientStats | None = None
    connector: ConnectorCounters | None = None


class RemoteConfigReceived(msgspec.Struct, frozen=True, tag=True):
    """The edge pushed a configuration (already checked by the worker) to a connection of
    ``slot``: make it the ingress of every worker if ``version`` is newer than the one in force."""

    slot: int
    version: int
    config: bytes


class Heartbeat(msgspec.Struct, frozen=True, tag=True):
    """Sent from the worker's event loop: proves the loop runs, with its lag."""

    slot: int
    pid: int
    loop_lag: float
    active_streams: int


Event = (
    ConnectionRegistered
    | RegistrationRefused
    | ConnectionLost
    | ConnectionUnregistered
    | StatsSnapshot
    | Heartbeat
    | RemoteConfigReceived
)

_boot_decoder = msgspec.msgpack.Decoder(WorkerBoot)
_command_decoder = msgspec.msgpack.Decoder(Command)
_event_decoder = msgspec.msgpack.Decoder(Event)
_encoder = msgspec.msgpack.Encoder()


def encode(message: Command | Event | WorkerBoot) -> bytes:
    """Encode a command, an event or a worker's boot message."""
    return _encoder.encode(message)


def decode_command(data: bytes) -> Command:
    """Decode a command; raises ``msgspec.ValidationError``/``DecodeError`` on bad bytes."""
    command: Command = _command_decoder.decode(data)
    return command


def decode_event(data: bytes) -> Event:
    """Decode an event; raises ``msgspec.ValidationError``/``DecodeError`` on bad bytes."""
    event: Event = _event_decoder.decode(data)
    return event


def decode_boot(data: bytes) -> WorkerBoot:
    """Decode a worker's boot message; raises like :func:`decode_command`."""
    boot: WorkerBoot = _boot_decoder.decode(data)
    return boot


#: Bytes of the big-endian length in front of a framed message.
FRAME_HEADER = 4


def frame(data: bytes) -> bytes:
    """``data`` with its length in front, for a byte stream (a worker's stdin)."""
    return len(data).to_bytes(FRAME_HEADER, "big") + data


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next framed message of ``stream`` (blocking), ``None`` at end-of-file before one.

    A message cut short by end-of-file is returned short: decoding it then fails.
    """
    header = stream.read(FRAME_HEADER)
    if len(header) < FRAME_HEADER:
        return None
    return stream.read(int.from_bytes(header, "big"))
