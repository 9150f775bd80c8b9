"""``adit tunnel run [TUNNEL]``: resolve flags, config, credentials, ingress; start the supervisor.

Everything that can be checked is checked here, before any worker exists: flag values
(flag > env > config file > default), the credentials (cloudflared's selection order and
messages), the edge addresses and the ingress rules (validated by the same code the workers
run). The supervisor then gets one immutable :class:`SupervisorSettings`.
"""

from __future__ import annotations

import contextlib
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

from adit.cli.quick import QUICK_TUNNEL_URL_VARIABLE
from adit.cli.state import CommandFailure, UsageFailure, cli_state
from adit.cli.tunnel_flags import (
    TUNNEL_FLAGS,
    flag_notes,
    is_flag_name,
    is_used,
    tunnel_options,
)
from adit.config.duration import Duration
from adit.config.errors import ConfigError
from adit.config.load import LoadedConfig, find_config_path, load_config, search_directories
from adit.config.settings import effective_value
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
    "diag_flags",
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
    "UDP egress to the edge; 'http2' - based on HTTP/2, relying on TCP egress to the edge"
)
#: cloudflared's words (connection/protocol.go:243-246).
_H2MUX_WARNING: Final = (
    "h2mux is no longer a supported protocol: upgrading edge connection to http2. Please "
    "remove '--protocol h2mux' from runtime arguments to remove this warning."
)
#: Masked in the Settings line and the copy the edge gets (the legacy API and SSH log-upload
#: flags are accepted, so they may carry keys too).
_SECRET_FLAGS: Final = frozenset(
    {"token", "credentials-contents", "api-key", "api-ca-key", "secret-id", "access-key-id"}
    | {"session-token"}
)
#: The flags (or keys) of ``--url`` mode: one of them serves a file without ``ingress`` rules.
_SINGLE_ORIGIN_FLAGS: Final = ("url", "hello_world", "unix_socket", "bastion")
_SECRET_ENV: Final = frozenset(
    {"TUNNEL_TOKEN", "TUNNEL_CRED_CONTENTS", "TUNNEL_API_KEY", "TUNNEL_API_CA_KEY"}
)
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
_FLAGS: Final = {flag.param: flag for flag in TUNNEL_FLAGS}


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

    def given(self, name: str) -> bool:
        """Whether flag ``name`` was set (any level's command line, env, or the file)."""
        flag = _FLAGS[name]
        return is_used(self.ctx, flag, self.loaded)

    def set_flags(self) -> dict[str, object]:
        """Flags set explicitly or by the file, for the Settings line and the edge's copy."""
        settings: dict[str, object] = {}
        for flag in TUNNEL_FLAGS:
            if not self.given(flag.param):
                continue
            value = self.get(flag.param)
            if isinstance(value, Duration):
                value = value.text
            elif isinstance(value, tuple):
                value = list(value)
            settings[flag.name] = "*****" if flag.name in _SECRET_FLAGS else value
            if flag.name == "credentials-file":
                settings["cred-file"] = settings[flag.name]
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
    unknown = [key for key in loaded.extra if not is_flag_name(key)]
    if unknown:
        # cloudflared ignores them without a word; a misspelt flag name should not be.
        log.warning(
            "Configuration file %s: %s not a flag name nor a known key; ignored",
            path,
            ", ".join(unknown) + (" is" if len(unknown) == 1 else " are"),
        )
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
            api_url = values.get("api_url")
            account = AccountContext(ctx, str(origincert) if origincert else None, api_url)
            tunnel_id = account.find_id(ref)
        except ApiError as exc:
            raise CommandFailure(f"error parsing tunnel ID: {exc}") from None
    cert_path = Path(str(origincert)) if origincert else find_default_origin_cert()
    found = find_credentials_file(tunnel_id, cert_path)
    if found is None:
        raise CommandFailure("tunnel credentials file not found")
    return _with_tunnel_id(_credentials_file(str(found)), ref), str(found)


def _origin_request_from_flags(values: _Resolver) -> dict[str, object]:
    origin: dict[str, object] = {}
    # Only the flags that were set, as cloudflared's ``c.IsSet`` (ingress/config.go): the
    # others leave the built-in originRequest defaults.
    for name, key in _ORIGIN_FLAGS.items():
        if not values.given(name):
            continue
        value = values.get(name)
        if value is None or value is False:
            continue
        origin[key] = value.text if isinstance(value, Duration) else value
    if values.given("socks5") and values.get("socks5"):
        origin["proxyType"] = "socks"
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

    loaded = _load_config(ctx, config_path or effective_value(ctx, "config_path", None))
    values = _Resolver(ctx, loaded)
    log_settings = LogSettings(
        level=str(values.get("loglevel") or "info"),
        output=str(values.get("output") or values.get("output", key="log-format") or "default"),
        logfile=values.get("logfile"),
        log_directory=values.get("log_directory"),
    )
    if starting:
        configure_logging(log_settings)
        for note in flag_notes(ctx, loaded):
            log.info(note)

    ip_version = str(values.get("edge_ip_version"))
    if ip_version not in ("4", "6", "auto"):
        # Checked though adit does not use it, so that a unit that works here works there.
        raise CommandFailure(f"invalid value for edge-ip-version: {ip_version}")
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
        management_hostname=_management_hostname(values),
        management_diagnostics=bool(values.get("management_diagnostics")),
        worker_timeout=worker_timeout,
        config_path=str(loaded.path) if loaded is not None else None,
        credentials_path=credentials_path,
        cli_flags=diag_flags(flags),
        quick_tunnel_url=os.environ.get(QUICK_TUNNEL_URL_VARIABLE, ""),
    )


def diag_flags(flags: dict[str, object]) -> dict[str, str]:
    """``set_flags()`` as strings for ``/diag/configuration``; secret flags stay masked.

    Masked: the known secret flags, and any flag whose name says token, secret or password,
    so that a secret flag added later is masked without anyone remembering this list (a
    ``--token-file`` path is not a secret: the file is 0600 and stays on the host).
    """
    out: dict[str, str] = {}
    for key, value in flags.items():
        if value is None or value == "" or value is False:
            continue
        secret = key in _SECRET_FLAGS or any(w in key for w in ("token", "secret", "password"))
        if secret and key != "token-file":
            out[key] = "*****"
            continue
        if isinstance(value, list | tuple):
            out[key] = ", ".join(str(v) for v in value)
        else:
            out[key] = "true" if value is True else str(value)
    return out


def _management_hostname(values: _Resolver) -> str:
    """``--management-hostname`` as the connector compares it with a request's Host."""
    from adit.protocol.hostnames import InvalidHostname, check_hostname

    value = str(values.get("management_hostname") or "management.argotunnel.com")
    try:
        return check_hostname(value)
    except InvalidHostname as exc:
        raise CommandFailure(f"--management-hostname {value!r}: {exc}") from None


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


#: Set (to the config file a start read, or empty) in a reload's parser child: ``run`` prints
#: the settings (msgpack) on stdout instead of running (``adit.supervisor.lean``).
SETTINGS_ONLY = "ADIT_SETTINGS_ONLY"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), at least one entry."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0)) or [0]
    return list(range(os.cpu_count() or 1))


@click.command("run")
@click.argument("tunnel", nargs=-1, metavar="[TUNNEL]")
@tunnel_options()
@click.pass_context
def run(ctx: click.Context, /, tunnel: tuple[str, ...], **_options: Any) -> None:
    """Run a tunnel: connect to the edge and proxy its requests to local origins.

    TUNNEL is the tunnel's UUID or name (or tunnel: in the config file); a --token needs none.
    Every flag is also accepted before run (adit tunnel --flag run) and before tunnel
    (adit --flag tunnel run); the innermost one wins.
    """
    from adit.supervisor.launch import Supervisor
    from adit.supervisor.spawn import command_line, discard_prestarted

    settings_only = os.environ.get(SETTINGS_ONLY)
    if settings_only is not None:
        # A lean supervisor's reload (adit.supervisor.lean.load_in_child): print, don't run.
        from adit.supervisor.lean import write_refusal, write_settings

        try:
            settings = load_settings(ctx, tunnel, config_path=settings_only or None)
        except click.ClickException as exc:
            write_refusal(exc.format_message())
            raise
        write_settings(settings)
        return
    configure_logging(LogSettings())
    try:
        settings = load_settings(ctx, tunnel, starting=True)
    except BaseException:
        # Worker 0 may have been started before the settings (adit.cli.main): it never runs.
        discard_prestarted()
        raise
    args = command_line()
    if args is not None:
        # The real command line: become a supervisor without click, yaml and the config
        # code (adit.supervisor.lean); returns only if the exec failed.
        from adit.supervisor.lean import handover

        with contextlib.suppress(OSError):
            handover(settings, args)
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
