"""``adit tunnel run [TUNNEL]``: resolve flags, config, credentials, ingress; start the supervisor.

Everything that can be checked is checked here, before any worker exists: flag values
(flag > env > config file > default), the credentials (cloudflared's selection order and
messages), the edge addresses and the ingress rules (validated by the same code the workers
run). The supervisor then gets one immutable :class:`SupervisorSettings`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import ssl
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click
import msgspec

from adit.cli.state import CommandFailure, UsageFailure, cli_state
from adit.config.duration import Duration
from adit.config.errors import ConfigError
from adit.config.load import LoadedConfig, find_config_path, load_config, search_directories
from adit.config.settings import DURATION, effective_value
from adit.credentials import (
    CredentialsError,
    InvalidCredentialsJson,
    TunnelCredentials,
    credentials_from_json,
    decode_tunnel_token,
    find_credentials_file,
    find_default_origin_cert,
    load_credentials_file,
)
from adit.ipc.messages import EdgeTarget, IngressSnapshot
from adit.logs import LogSettings, configure_logging, fields
from adit.protocol.hostnames import AddressError, split_address
from adit.version import __version__

if TYPE_CHECKING:
    from adit.supervisor.settings import SupervisorSettings

__all__ = [
    "COMMANDS",
    "MAX_GRACE_PERIOD",
    "load_settings",
    "parse_edge_addresses",
    "parse_tags",
    "resolve_protocol",
    "run",
    "usable_cpus",
]

#: cloudflared's hard cap on ``--grace-period``.
MAX_GRACE_PERIOD: Final = 180.0
_COMMAND: Final = '"adit tunnel run"'
_NO_TUNNEL: Final = (
    f"{_COMMAND} requires the ID or name of the tunnel to run as the last command line "
    "argument or in the configuration file."
)
_TWO_ARGS: Final = f"{_COMMAND} accepts only one argument, the ID or name of the tunnel to run."
_POST_QUANTUM_HTTP2: Final = (
    "--post-quantum needs the X25519MLKEM768 key exchange, which adit does over QUIC; over "
    "HTTP/2 TLS is {}'s, which does not offer it: use --protocol quic (or auto, which then "
    "means quic)"
)
_UNKNOWN_PROTOCOL: Final = (
    "unknown protocol {}, Available protocols: 'auto' - automatically chooses the best protocol "
    "over time (the default; and also the recommended one); 'quic' - based on QUIC, relying on "
    "UDP egress to Cloudflare edge; 'http2' - using Go's HTTP2 library, relying on TCP egress "
    "to Cloudflare edge"
)
#: cloudflared's words (connection/protocol.go:243-246).
_H2MUX_WARNING: Final = (
    "h2mux is no longer a supported protocol: upgrading edge connection to http2. Please "
    "remove '--protocol h2mux' from runtime arguments to remove this warning."
)
_SECRET_FLAGS: Final = frozenset({"token", "credentials-contents"})
#: The flags (or keys) of ``--url`` mode: one of them serves a file without ``ingress`` rules.
_SINGLE_ORIGIN_FLAGS: Final = ("url", "hello_world", "unix_socket", "bastion")
_SECRET_ENV: Final = frozenset({"TUNNEL_TOKEN", "TUNNEL_CRED_CONTENTS"})
#: ``--url``-mode flags and the ``originRequest`` key each one sets.
_ORIGIN_FLAGS: Final = {
    "no_tls_verify": "noTLSVerify",
    "http_host_header": "httpHostHeader",
    "origin_server_name": "originServerName",
    "origin_ca_pool": "caPool",
    "proxy_connect_timeout": "connectTimeout",
    "proxy_tls_timeout": "tlsTimeout",
    "proxy_tcp_keepalive": "tcpKeepAlive",
    "proxy_no_happy_eyeballs": "noHappyEyeballs",
    "proxy_keepalive_connections": "keepAliveConnections",
    "proxy_keepalive_timeout": "keepAliveTimeout",
    "no_chunked_encoding": "disableChunkedEncoding",
    "http2_origin": "http2Origin",
    "proxy_address": "proxyAddress",
    "proxy_port": "proxyPort",
}

log = logging.getLogger("adit.cli")


def _opt(*names: str, **kwargs: Any) -> Any:
    return click.option(*names, **kwargs)


_OPTIONS: Final = [
    _opt("--config", "config_path", default=None, help="Path to a config.yml."),
    _opt("--origincert", envvar="TUNNEL_ORIGIN_CERT", default=None, help="Origin cert.pem."),
    _opt("--credentials-file", "--cred-file", "credentials_file", envvar="TUNNEL_CRED_FILE",
         default=None, help="Tunnel credentials JSON written by `adit tunnel create`."),
    _opt("--credentials-contents", envvar="TUNNEL_CRED_CONTENTS", default=None,
         help="Tunnel credentials JSON given inline."),
    _opt("--token", envvar="TUNNEL_TOKEN", default=None, help="Tunnel token."),
    _opt("--token-file", envvar="TUNNEL_TOKEN_FILE", default=None, help="File holding a token."),
    _opt("--edge", multiple=True, envvar="TUNNEL_EDGE", help="Edge address host:port (repeat)."),
    _opt("--cacert", envvar="TUNNEL_CACERT", default=None, help="CA (PEM) of the edge's TLS."),
    _opt("--ha-connections", type=int, default=4, show_default=True,
         help="Edge connections to hold."),
    _opt("--workers", type=int, default=None,
         help="Worker processes (adit only; default: min(usable CPUs, --ha-connections))."),
    _opt("--worker-timeout", type=DURATION, envvar="TUNNEL_WORKER_TIMEOUT",
         default=Duration.parse("10s"),
         help="A worker without a heartbeat this long is aborted and replaced (adit only)."),
    _opt("--grace-period", type=DURATION, envvar="TUNNEL_GRACE_PERIOD",
         default=Duration.parse("30s"), help="Drain time on SIGTERM/SIGINT (max 3m)."),
    _opt("--retries", type=int, envvar="TUNNEL_RETRIES", default=5,
         help="Backoff doublings; also failures before falling back from QUIC to HTTP/2."),
    _opt("--max-edge-addr-retries", type=int, default=8, hidden=True,
         help="Dial errors of a connection before it may fall back from QUIC to HTTP/2."),
    _opt("--metrics", envvar="TUNNEL_METRICS", default="localhost:0", show_default=True,
         help="Listen address of /metrics, /ready and /healthcheck."),
    _opt("--pidfile", envvar="TUNNEL_PIDFILE", default=None,
         help="Write the PID here after the first connection registered."),
    _opt("--loglevel", envvar="TUNNEL_LOGLEVEL", default="info", show_default=True,
         help="debug, info, warn, error or fatal."),
    _opt("--transport-loglevel", "--proto-loglevel", "transport_loglevel",
         envvar=["TUNNEL_PROTO_LOGLEVEL", "TUNNEL_TRANSPORT_LOGLEVEL"], default="info",
         help="Transport log level (accepted)."),
    _opt("--logfile", envvar="TUNNEL_LOGFILE", default=None, help="Append JSON logs here."),
    _opt("--log-directory", envvar="TUNNEL_LOGDIRECTORY", default=None,
         help="Rotating adit.log in this directory."),
    _opt("--output", "--log-format", "output", envvar=["TUNNEL_MANAGEMENT_OUTPUT",
         "TUNNEL_LOG_OUTPUT"], default="default", help="Console log format: default or json."),
    _opt("--protocol", "-p", envvar="TUNNEL_TRANSPORT_PROTOCOL", default="auto",
         help="auto, http2 or quic (auto: QUIC, falling back to HTTP/2)."),
    _opt("--url", envvar="TUNNEL_URL", default=None, help="Single origin (without ingress)."),
    _opt("--hello-world", envvar="TUNNEL_HELLO_WORLD", is_flag=True, default=False,
         help="Serve the built-in test origin."),
    _opt("--unix-socket", envvar="TUNNEL_UNIX_SOCKET", default=None,
         help="Single origin over a unix socket."),
    _opt("--bastion", envvar="TUNNEL_BASTION", is_flag=True, default=False,
         help="Single origin is a bastion."),
    _opt("--no-tls-verify", is_flag=True, default=False, help="--url mode: no TLS checks."),
    _opt("--http-host-header", default=None, help="--url mode: Host header for the origin."),
    _opt("--origin-server-name", default=None, help="--url mode: origin TLS server name."),
    _opt("--origin-ca-pool", default=None, help="--url mode: origin CA pool."),
    _opt("--proxy-connect-timeout", type=DURATION, default=None, help="--url mode."),
    _opt("--proxy-tls-timeout", type=DURATION, default=None, help="--url mode."),
    _opt("--proxy-tcp-keepalive", type=DURATION, default=None, help="--url mode."),
    _opt("--proxy-no-happy-eyeballs", is_flag=True, default=None, help="--url mode."),
    _opt("--proxy-keepalive-connections", type=int, default=None, help="--url mode."),
    _opt("--proxy-keepalive-timeout", type=DURATION, default=None, help="--url mode."),
    _opt("--no-chunked-encoding", is_flag=True, default=None, help="--url mode."),
    _opt("--http2-origin", is_flag=True, default=None, help="--url mode."),
    _opt("--proxy-address", default=None, help="--url mode."),
    _opt("--proxy-port", type=int, default=None, help="--url mode."),
    _opt("--tag", multiple=True, envvar="TUNNEL_TAG", help="KEY=VALUE sent to origins (repeat)."),
    _opt("--label", default=None, help="Connector label."),
    _opt("--features", "-F", multiple=True, help="Opt-in feature names (repeat)."),
    _opt("--max-active-flows", type=click.IntRange(min=0), envvar="TUNNEL_MAX_ACTIVE_FLOWS",
         default=None,
         help="Most private-network UDP flows served at once (0: no limit; per worker)."),
    _opt("--no-autoupdate", envvar="NO_AUTOUPDATE", is_flag=True, default=False,
         help="Accepted; adit never updates itself."),
    _opt("--autoupdate-freq", type=DURATION, default=None, help="Accepted, no effect."),
    _opt("--no-prechecks", envvar="TUNNEL_NO_PRECHECKS", is_flag=True, default=False,
         help="Accepted, no effect."),
    _opt("--post-quantum", "--pq", envvar="TUNNEL_POST_QUANTUM", is_flag=True, default=False,
         help="Accepted, no effect yet."),
    _opt("--edge-ip-version", envvar="TUNNEL_EDGE_IP_VERSION", default="auto", help="Accepted."),
    _opt("--edge-bind-address", envvar="TUNNEL_EDGE_BIND_ADDRESS", default=None,
         help="Accepted."),
    _opt("--region", envvar="TUNNEL_REGION", default=None, help="Accepted."),
]  # fmt: skip


def _with_options(command: Any) -> Any:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


# -- pure helpers (unit-tested) -----------------------------------------------------------------


def parse_edge_addresses(addresses: list[str]) -> list[EdgeTarget]:
    """``host:port`` strings (commas also separate) into targets split over two locations.

    cloudflared splits a static ``--edge`` list alternately into two pseudo-regions.
    """
    targets: list[EdgeTarget] = []
    for entry in addresses:
        for address in (a.strip() for a in entry.split(",")):
            if not address:
                continue
            try:
                host, port = split_address(address)
            except AddressError:
                host, port = "", 0
            if not host or port == 0:
                raise CommandFailure(f"Invalid edge address {address}: expected host:port")
            targets.append(EdgeTarget(host, port, location=len(targets) % 2))
    return targets


def parse_tags(values: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` tags, failing with cloudflared's message."""
    tags: dict[str, str] = {}
    for value in values:
        key, sep, tag_value = value.partition("=")
        if not sep or not key:
            raise CommandFailure(f"Tag parse failure: Cannot parse tag value {value}")
        tags[key] = tag_value
    return tags


def resolve_protocol(value: str) -> str:
    """``--protocol`` as the workers get it: ``auto``, ``quic`` or ``http2``.

    cloudflared's choices, compared as given (connection/protocol.go:241-259): ``h2mux`` is
    http2 with a warning, anything else is refused. ``auto`` starts with QUIC and falls
    back to HTTP/2 (:mod:`adit.workers.protocol_choice`).
    """
    if value == "h2mux":
        log.warning(_H2MUX_WARNING)
        return "http2"
    if value in ("http2", "quic", "auto"):
        return value
    raise CommandFailure(_UNKNOWN_PROTOCOL.format(value))


def post_quantum_protocol(protocol: str) -> str:
    """The protocol ``--post-quantum`` leaves: QUIC, whose key exchange adit does itself
    (X25519MLKEM768, strict); HTTP/2's TLS is the system OpenSSL's, and OpenSSL 3.0 has no
    ML-KEM, so ``http2`` is refused with a reason instead of failing every handshake, and
    ``auto`` never falls back to it."""
    if protocol == "http2":
        raise CommandFailure(_POST_QUANTUM_HTTP2.format(ssl.OPENSSL_VERSION))
    return "quic"


def _uint8(value: int) -> int:
    """``value`` as Go's ``uint8(...)`` conversion leaves it (cloudflared keeps
    ``--max-edge-addr-retries`` in a uint8: cmd/cloudflared/tunnel/configuration.go:248)."""
    return value % 256


def _go_map(values: dict[str, object]) -> str:
    """Go's ``%v`` of a ``map[string]...`` (sorted keys), as the Settings log line shows it."""

    def render(value: object) -> str:
        if isinstance(value, list | tuple):
            return "[" + " ".join(render(v) for v in value) + "]"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return "map[" + " ".join(f"{k}:{render(values[k])}" for k in sorted(values)) + "]"


def _go_errno(path: str, exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    return f"open {path}: {reason}"


# -- resolution ---------------------------------------------------------------------------------


class _Resolver:
    """Effective values of ``run``'s parameters (flag > env > file > default)."""

    def __init__(self, ctx: click.Context, loaded: LoadedConfig | None) -> None:
        self.ctx = ctx
        self.loaded = loaded

    def get(self, name: str, *, key: str | None = None) -> Any:
        return effective_value(self.ctx, name, self.loaded, key=key)

    def list(self, name: str, *, key: str | None = None) -> list[str]:
        value = self.get(name, key=key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value]

    def set_flags(self) -> dict[str, object]:
        """Flags set explicitly or by the file, for the Settings line and the edge's copy."""
        settings: dict[str, object] = {}
        for param in self.ctx.command.params:
            if not isinstance(param, click.Option) or param.name is None:
                continue
            source = self.ctx.get_parameter_source(param.name)
            key = max((o for o in param.opts if o.startswith("--")), key=len)[2:]
            explicit = source in (
                click.core.ParameterSource.COMMANDLINE,
                click.core.ParameterSource.ENVIRONMENT,
            )
            file_has = self.loaded is not None and self.get(param.name) != self.ctx.params.get(
                param.name
            )
            if not (explicit or file_has):
                continue
            value = self.get(param.name)
            if isinstance(value, Duration):
                value = value.text
            settings[key] = "*****" if key in _SECRET_FLAGS else value
            if key == "credentials-file":
                settings["cred-file"] = settings[key]
        return settings


def _load_config(ctx: click.Context, explicit: str | None) -> LoadedConfig | None:
    path = find_config_path(explicit or cli_state(ctx).config_path)
    if path is None:
        dirs = " ".join(str(d) for d in search_directories())
        log.info(
            "Cannot determine default configuration path. No file [config.yml config.yaml] in [%s]",
            dirs,
        )
        return None
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        raise CommandFailure(str(exc)) from None
    if loaded.empty:
        # Kept, not dropped: an empty file has no rules, which validate_file judges.
        log.error("Configuration file %s was empty", path)
    if loaded.warnings:
        log.warning("Your configuration file has unused keys: %s", loaded.warnings_text())
    return loaded


def _tunnel_ref(ctx: click.Context, args: tuple[str, ...], loaded: LoadedConfig | None) -> str:
    if len(args) > 1:
        raise UsageFailure(_TWO_ARGS, ctx)
    if args:
        return args[0]
    ref = loaded.config.tunnel if loaded is not None else None
    if not ref:
        raise UsageFailure(_NO_TUNNEL, ctx)
    return ref


def _with_tunnel_id(creds: TunnelCredentials, ref: str) -> TunnelCredentials:
    """cloudflared overwrites the credentials' TunnelID with the resolved ID (old files lack it)."""
    try:
        tunnel_id = uuid.UUID(ref)
    except ValueError:
        return creds
    return TunnelCredentials(
        creds.account_tag,
        creds.tunnel_secret,
        tunnel_id,
        creds.endpoint,
        creds.edge,
        creds.edge_ca_pem,
    )


def _credentials_file(path: str) -> TunnelCredentials:
    try:
        return load_credentials_file(path)
    except InvalidCredentialsJson as exc:
        log.error("Error unmarshaling %s error=%r", exc.path, exc.detail)
        log.error("The tunnel credentials file should be JSON written by `adit tunnel create`")
        raise CommandFailure(str(exc)) from None
    except CredentialsError as exc:
        raise CommandFailure(str(exc)) from None


def resolve_credentials(
    ctx: click.Context, values: _Resolver, args: tuple[str, ...]
) -> tuple[TunnelCredentials, str | None]:
    """cloudflared's order: token, token file, then tunnel ref + contents / file / search.

    Also returns the file the credentials came from (``None``: a token or inline JSON), which
    the supervisor watches for rotation.
    """
    token = values.get("token")
    if token:
        try:
            return decode_tunnel_token(str(token)), None
        except CredentialsError as exc:
            raise UsageFailure(str(exc), ctx) from None
    token_file = values.get("token_file")
    if token_file:
        try:
            text = Path(os.path.expanduser(str(token_file))).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageFailure(
                f"Failed to read token file: {_go_errno(str(token_file), exc)}", ctx
            ) from None
        try:
            return decode_tunnel_token(text.strip()), os.path.expanduser(str(token_file))
        except CredentialsError as exc:
            raise UsageFailure(str(exc), ctx) from None
    ref = _tunnel_ref(ctx, args, values.loaded)
    contents = values.get("credentials_contents")
    if contents:
        try:
            return _with_tunnel_id(credentials_from_json(str(contents)), ref), None
        except ValueError:
            raise CommandFailure("Invalid JSON when parsing tunnel credentials file") from None
    cred_file = values.get("credentials_file") or values.get("credentials_file", key="cred-file")
    if cred_file:
        path = os.path.expanduser(str(cred_file))
        return _with_tunnel_id(_credentials_file(str(cred_file)), ref), path
    origincert = values.get("origincert") or cli_state(ctx).origincert
    try:
        tunnel_id = uuid.UUID(ref)
    except ValueError:
        # A name: ask the edge's API with cert.pem, as cloudflared's findID does.
        from adit.cli.apiclient import ApiError
        from adit.cli.manage import AccountContext

        try:
            tunnel_id = AccountContext(ctx, str(origincert) if origincert else None, None).find_id(
                ref
            )
        except ApiError as exc:
            raise CommandFailure(f"error parsing tunnel ID: {exc}") from None
    cert_path = Path(str(origincert)) if origincert else find_default_origin_cert()
    found = find_credentials_file(tunnel_id, cert_path)
    if found is None:
        raise CommandFailure("tunnel credentials file not found")
    return _with_tunnel_id(_credentials_file(str(found)), ref), str(found)


def _origin_request_from_flags(values: _Resolver) -> dict[str, object]:
    origin: dict[str, object] = {}
    for name, key in _ORIGIN_FLAGS.items():
        value = values.get(name)
        if value is None or value is False:
            continue
        origin[key] = value.text if isinstance(value, Duration) else value
    return origin


def _enc_hook(value: object) -> object:
    if isinstance(value, Duration):
        return value.text
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def build_ingress_snapshot(
    values: _Resolver, flags: dict[str, object], *, starting: bool = False
) -> IngressSnapshot:
    """The ingress the workers will run: the file's rules, else ``--url`` mode; validated.

    The file goes through :func:`~adit.config.validation.validate_file`, as in ``ingress
    validate``; errors name the file, the line and the location.
    """
    from adit.config.errors import IngressError
    from adit.config.ingress import URL_WITH_INGRESS_MESSAGE
    from adit.config.validation import validate_file
    from adit.ipc.snapshot import build_ingress

    loaded = values.loaded
    single_origin = any(values.get(name) for name in _SINGLE_ORIGIN_FLAGS)
    try:
        validate_file(loaded, single_origin=single_origin)
    except IngressError as exc:
        assert loaded is not None  # no file raises nothing
        _refuse(str(loaded.locate(exc)), starting=starting)
    rules: list[dict[str, object]] = []
    origin_request: dict[str, object] = {}
    if loaded is not None and loaded.config.ingress:
        if values.get("url"):
            raise CommandFailure(URL_WITH_INGRESS_MESSAGE)
        rules = msgspec.to_builtins(loaded.config.ingress, enc_hook=_enc_hook)
        if loaded.config.origin_request is not None:
            origin_request = msgspec.to_builtins(loaded.config.origin_request, enc_hook=_enc_hook)
        snapshot = IngressSnapshot(version=1, rules=rules, origin_request=origin_request)
    else:
        snapshot = IngressSnapshot(
            version=1,
            origin_request=_origin_request_from_flags(values),
            cli_url=values.get("url"),
            cli_hello_world=bool(values.get("hello_world")),
            cli_unix_socket=values.get("unix_socket"),
            cli_bastion=bool(values.get("bastion")),
        )
    try:
        build_ingress(snapshot)
    except ConfigError as exc:
        _refuse(str(exc), starting=starting)
    local = {
        "__configuration_flags": {k: str(v) for k, v in flags.items()},
        "ingress": rules,
        "warp-routing": {},
    }
    if origin_request and rules:
        local["originRequest"] = origin_request
    return msgspec.structs.replace(
        snapshot, local_config_json=json.dumps(local, separators=(",", ":")).encode()
    )


def _refuse(error: str, *, starting: bool) -> NoReturn:
    """Fail with ``error``; a reload's refusal is logged by the supervisor, a start's here."""
    if starting:
        log.error("Couldn't start tunnel", extra=fields(error=error))
    raise CommandFailure(error)


def _log_startup(tunnel_id: str, flags: dict[str, object]) -> None:
    log.info("Starting tunnel tunnelID=%s", tunnel_id)
    log.info("Version %s", __version__)
    log.info("GOOS: %s, GOVersion: python%s, GoArch: %s", os.uname().sysname.lower(),
             platform.python_version(), platform.machine())  # fmt: skip
    log.info("Settings: %s", _go_map(flags))
    env = {
        k: ("*****" if k in _SECRET_ENV else v)
        for k, v in os.environ.items()
        if k.startswith("TUNNEL_")
    }
    if env:
        log.info("Environmental variables %s", _go_map(dict(env)))


def load_settings(
    ctx: click.Context,
    tunnel: tuple[str, ...],
    *,
    starting: bool = False,
    config_path: str | None = None,
) -> SupervisorSettings:
    """Read the config file and resolve every flag into settings, as start-up does.

    Pure apart from reading files (config, credentials, CA): the supervisor calls it again on
    SIGHUP, with ``config_path`` the file the start read (a reload reads that file or fails;
    it never falls back to another one on the search path). Raises
    :class:`click.ClickException` (``CommandFailure``/``UsageFailure``) with the message for
    the user. ``starting`` also installs logging and prints the start-up lines.
    """
    from adit.supervisor.settings import SupervisorSettings

    loaded = _load_config(ctx, config_path or ctx.params.get("config_path"))
    values = _Resolver(ctx, loaded)
    log_settings = LogSettings(
        level=str(values.get("loglevel") or "info"),
        output=str(values.get("output") or values.get("output", key="log-format") or "default"),
        logfile=values.get("logfile"),
        log_directory=values.get("log_directory"),
    )
    if starting:
        configure_logging(log_settings)

    protocol = resolve_protocol(str(values.get("protocol") or "auto"))
    post_quantum = bool(values.get("post_quantum"))
    if post_quantum:
        protocol = post_quantum_protocol(protocol)

    grace = values.get("grace_period")
    grace_seconds = grace.seconds if isinstance(grace, Duration) else 30.0
    if grace_seconds > MAX_GRACE_PERIOD:
        raise CommandFailure("grace-period must be equal or less than 3m0s")
    grace_seconds = max(0.0, grace_seconds)
    timeout = values.get("worker_timeout")
    worker_timeout = timeout.seconds if isinstance(timeout, Duration) else 10.0
    if worker_timeout <= 0:
        raise UsageFailure("--worker-timeout must be positive", ctx)
    tags = parse_tags(values.list("tag"))
    workers_value = values.get("workers")
    if workers_value is not None and int(workers_value) < 1:
        raise UsageFailure("--workers must be at least 1", ctx)

    creds, credentials_path = resolve_credentials(ctx, values, tunnel)
    flags = values.set_flags()
    if starting:
        _log_startup(str(creds.tunnel_id), flags)

    edge_list = values.list("edge") or list(creds.edge)
    edges = parse_edge_addresses(edge_list)
    if not edges:
        raise CommandFailure(
            "No edge address: give --edge host:port (or $TUNNEL_EDGE), or use credentials "
            "written by `adit tunnel create` against an adit edge"
        )
    requested = int(values.get("ha_connections") or 4)
    ha = max(1, min(requested, len(edges)))
    if ha < requested and starting:
        log.info("You requested %d HA connections but I can give you at most %d.", requested, ha)
    # Default: one worker per CPU this process may use, but never more than connections.
    workers = int(workers_value) if workers_value is not None else min(len(usable_cpus()), ha)

    ca_pem = creds.edge_ca_pem
    cacert = values.get("cacert")
    if cacert:
        try:
            ca_pem = Path(os.path.expanduser(str(cacert))).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandFailure(f"Failed to read the edge CA certificate: {exc}") from None

    ingress = build_ingress_snapshot(values, flags, starting=starting)
    return SupervisorSettings(
        tunnel_id=str(creds.tunnel_id),
        account_tag=creds.account_tag,
        tunnel_secret=creds.tunnel_secret,
        edges=tuple(edges),
        edge_ca_pem=ca_pem,
        ingress=ingress,
        ha_connections=ha,
        workers=max(1, workers),
        grace_period=grace_seconds,
        retries=int(values.get("retries") or 5),
        protocol=protocol,
        max_edge_addr_retries=_uint8(int(values.get("max_edge_addr_retries"))),
        post_quantum=post_quantum,
        metrics_address=str(values.get("metrics") or "localhost:0"),
        pidfile=values.get("pidfile"),
        log=log_settings,
        tags=tags,
        features=tuple(values.list("features")),
        max_active_flows=_max_active_flows(values),
        label=str(values.get("label") or ""),
        worker_timeout=worker_timeout,
        config_path=str(loaded.path) if loaded is not None else None,
        credentials_path=credentials_path,
    )


def _max_active_flows(values: _Resolver) -> int:
    """``--max-active-flows``, else the config file's ``warp-routing.maxActiveFlows``, else 0
    (no limit): the flag overrides the configured value (orchestration/orchestrator.go
    ``overrideMaxActiveFlows``)."""
    flag = values.get("max_active_flows")
    if flag is not None:
        return int(flag)
    loaded = values.loaded
    warp = loaded.config.warp_routing if loaded is not None else None
    if warp is not None and warp.max_active_flows is not None:
        return int(warp.max_active_flows)
    return 0


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), at least one entry."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0)) or [0]
    return list(range(os.cpu_count() or 1))


@click.command("run")
@click.argument("tunnel", nargs=-1)
@_with_options
@click.pass_context
def run(ctx: click.Context, /, tunnel: tuple[str, ...], **_options: Any) -> None:
    """Run a tunnel: connect to the edge and proxy its requests to local origins.

    TUNNEL is the tunnel's UUID or name (or `tunnel:` in the config file); a --token needs none.
    """
    from adit.supervisor.launch import Supervisor
    from adit.supervisor.spawn import discard_prestarted

    configure_logging(LogSettings())
    try:
        settings = load_settings(ctx, tunnel, starting=True)
    except BaseException:
        # Worker 0 may have been started before the settings (adit.cli.main): it never runs.
        discard_prestarted()
        raise
    supervisor = Supervisor(
        settings, reload=lambda: load_settings(ctx, tunnel, config_path=settings.config_path)
    )
    code = supervisor.run()
    if code == 1:
        raise CommandFailure(supervisor.failure or "tunnel stopped with an error")
    if code != 0:
        # Killed by a second signal: 128 + signum, what a shell reports for cloudflared.
        # (click's own Exit would be swallowed by standalone_mode=False.)
        raise SystemExit(code)


COMMANDS = [run]
