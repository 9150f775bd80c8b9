"""cloudflared's tunnel flag set, declared once and accepted at every position.

cloudflared's app-level flags *are* the tunnel flags (``cmd/cloudflared/main.go`` uses
``tunnel.Flags()``), ``tunnel`` declares them again and ``tunnel run`` adds its own, and a
child command sees the flags set on its parents (urfave/cli's lineage lookup). So all of
``adit --no-autoupdate tunnel run``, ``adit tunnel --no-autoupdate run`` and ``adit tunnel
run --no-autoupdate`` mean the same. :data:`TUNNEL_FLAGS` is that set with cloudflared's
names, aliases, defaults and environment variables; :func:`tunnel_options` puts it on a click
command. The value a flag ends up with is resolved across the levels by
:func:`adit.config.settings.effective_value`: the innermost command line, then the
environment, then the config file (keys are flag names), then the default.

A flag that makes no sense for adit carries a ``note``: it is accepted, and when it is used
(command line, environment or config file) :func:`flag_notes` gives the one line saying what
adit does instead. Every other flag reaches the settings (``tests/unit/cli`` checks both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
from click.core import ParameterSource

from adit.config.duration import Duration
from adit.config.settings import DURATION, file_value

if TYPE_CHECKING:
    from adit.config.load import LoadedConfig

__all__ = [
    "TUNNEL_FLAGS",
    "TunnelFlag",
    "explicit_argv",
    "flag_notes",
    "go_style_args",
    "is_flag_name",
    "is_set",
    "is_used",
    "tunnel_options",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TunnelFlag:
    """One flag: cloudflared's spelling, and what adit does with it."""

    name: str
    help: str
    #: ``str``, ``bool``, ``int``, ``uint``, ``duration`` or ``list`` (repeatable; commas
    #: also separate values in the environment variable, as Go's StringSlice does).
    kind: str = "str"
    default: object = None
    env: tuple[str, ...] = ()
    #: Other long names (``cred-file``) or one-letter ones (``p``).
    aliases: tuple[str, ...] = ()
    #: click's parameter name, when it is not the name with underscores.
    dest: str | None = None
    #: Hidden from ``--help`` (cloudflared hides it too, or it is adit-internal).
    hidden: bool = False
    #: For a flag adit accepts but does not act on: what adit does instead (one log line).
    note: str | None = None

    @property
    def param(self) -> str:
        return self.dest or self.name.replace("-", "_")

    @property
    def opts(self) -> list[str]:
        names = [f"--{self.name}"]
        names += [f"-{a}" if len(a) == 1 else f"--{a}" for a in self.aliases]
        return names


_AUTOUPDATE = "adit never updates itself; the distro package manager does"
_SSH = "cloudflared's built-in SSH server is gone; adit has none (use an ssh:// ingress rule)"
_PROXY_DNS = "the DNS proxy was removed from cloudflared (2026.2.0); adit has none either"
_ADHOC = (
    "adit runs no ad-hoc named tunnels; use adit tunnel create NAME, adit tunnel route dns "
    "NAME HOSTNAME and adit tunnel run NAME"
)
_API_KEY = "deprecated since cloudflared 2017.10.1; adit authenticates with cert.pem"
_NO_EFFECT = "no effect in cloudflared either"
_URL_MODE = "--url mode (no ingress rules): "


def _f(name: str, help: str, kind: str = "str", **kwargs: Any) -> TunnelFlag:
    return TunnelFlag(name, help, kind, **kwargs)


#: Every flag of ``cloudflared tunnel`` and ``cloudflared tunnel run``, plus adit's own
#: (``--workers``, ``--worker-timeout``, ``--log-format``), in cloudflared's source order
#: (``cmd/cloudflared/tunnel/cmd.go`` ``tunnelFlags``, ``subcommands.go`` ``buildRunCommand``).
TUNNEL_FLAGS: Final[tuple[TunnelFlag, ...]] = (
    # configureCloudflaredFlags
    _f("config", "Path to a config.yml (default: the first found in the search path).",
       env=("TUNNEL_CONFIG",), dest="config_path"),
    _f("origincert", "Path to the cert.pem written by adit tunnel login.",
       env=("TUNNEL_ORIGIN_CERT",)),
    _f("autoupdate-freq", "cloudflared's autoupdate frequency.",
       "duration", default=Duration.parse("24h"), note=_AUTOUPDATE),
    _f("no-autoupdate", "Disable cloudflared's periodic update check.", "bool",
       default=False, env=("NO_AUTOUPDATE",), note=_AUTOUPDATE),
    _f("no-prechecks", "Skip connectivity pre-checks at start-up.", "bool", default=False,
       env=("TUNNEL_NO_PRECHECKS",),
       note="adit runs no start-up connectivity pre-checks; a failing edge shows in the logs "
       "and on /ready"),
    _f("metrics", "Listen address of /metrics, /ready and /healthcheck (for tunnel ready and "
       "tunnel diag: the connector to ask).",
       default="localhost:0", env=("TUNNEL_METRICS",)),
    _f("pidfile", "Write the PID to this file after the first connection registered.",
       env=("TUNNEL_PIDFILE",)),
    # configureProxyFlags
    _f("url", "Single origin: connect to the local web server at this URL.",
       env=("TUNNEL_URL",)),
    _f("hello-world", "Serve the built-in hello-world test origin.", "bool", default=False,
       env=("TUNNEL_HELLO_WORLD",)),
    _f("socks5", _URL_MODE + "serve the origin as a SOCKS5 proxy.", "bool", default=False,
       env=("TUNNEL_SOCKS",)),
    _f("proxy-connect-timeout", _URL_MODE + "timeout to connect to the origin.", "duration",
       default=Duration.parse("30s")),
    _f("proxy-tls-timeout", _URL_MODE + "timeout of the origin's TLS handshake.", "duration",
       default=Duration.parse("10s")),
    _f("proxy-tcp-keepalive", _URL_MODE + "TCP keepalive of origin connections.", "duration",
       default=Duration.parse("30s")),
    _f("proxy-no-happy-eyeballs", _URL_MODE + "no happy eyeballs for the origin.", "bool",
       default=False),
    _f("proxy-keepalive-connections", _URL_MODE + "idle origin connections kept.", "int",
       default=100),
    _f("proxy-keepalive-timeout", _URL_MODE + "idle origin connections closed after.",
       "duration", default=Duration.parse("1m30s")),
    _f("proxy-connection-timeout", "Deprecated in cloudflared.", "duration",
       default=Duration.parse("1m30s"), note=_NO_EFFECT),
    _f("proxy-expect-continue-timeout", "Deprecated in cloudflared.", "duration",
       default=Duration.parse("1m30s"), note=_NO_EFFECT),
    _f("http-host-header", _URL_MODE + "Host header sent to the origin.",
       env=("TUNNEL_HTTP_HOST_HEADER",)),
    _f("origin-server-name", _URL_MODE + "server name expected on the origin's certificate.",
       env=("TUNNEL_ORIGIN_SERVER_NAME",)),
    _f("unix-socket", "Single origin over this unix socket instead of --url.",
       env=("TUNNEL_UNIX_SOCKET",)),
    _f("origin-ca-pool", _URL_MODE + "CA (PEM) of the origin's certificate.",
       env=("TUNNEL_ORIGIN_CA_POOL",)),
    _f("no-tls-verify", _URL_MODE + "accept any origin certificate.", "bool", default=False,
       env=("NO_TLS_VERIFY",)),
    _f("no-chunked-encoding", _URL_MODE + "no chunked transfer encoding to the origin.",
       "bool", default=False, env=("TUNNEL_NO_CHUNKED_ENCODING",)),
    _f("http2-origin", _URL_MODE + "speak HTTP/2 to the origin.", "bool", default=False,
       env=("TUNNEL_ORIGIN_ENABLE_HTTP2",)),
    _f("management-hostname", "Hostname of management requests.",
       default="management.argotunnel.com", env=("TUNNEL_MANAGEMENT_HOSTNAME",), hidden=True),
    _f("service-op-ip", "Fallback IP of management service operations.",
       default="198.41.200.113:80", env=("TUNNEL_SERVICE_OP_IP",), hidden=True,
       note="adit has no management service operations"),
    # sshFlags
    _f("local-ssh-port", "cloudflared's SSH server port.", default="2222",
       env=("LOCAL_SSH_PORT",), hidden=True, note=_SSH),
    _f("ssh-idle-timeout", "cloudflared's SSH server idle timeout.", "duration",
       env=("SSH_IDLE_TIMEOUT",), hidden=True, note=_SSH),
    _f("ssh-max-timeout", "cloudflared's SSH server absolute timeout.", "duration",
       env=("SSH_MAX_TIMEOUT",), hidden=True, note=_SSH),
    _f("bucket-name", "SSH log upload bucket.", env=("BUCKET_ID",), hidden=True, note=_SSH),
    _f("region-name", "SSH log upload region.", env=("REGION_ID",), hidden=True, note=_SSH),
    _f("secret-id", "SSH log upload secret ID.", env=("SECRET_ID",), hidden=True, note=_SSH),
    _f("access-key-id", "SSH log upload access key ID.", env=("ACCESS_CLIENT_ID",),
       hidden=True, note=_SSH),
    _f("session-token", "SSH log upload session token.", env=("SESSION_TOKEN_ID",),
       hidden=True, note=_SSH),
    _f("s3-url-host", "SSH log upload S3 URL.", env=("S3_URL",), hidden=True, note=_SSH),
    _f("host-key-path", "SSH host keys directory.", env=("HOST_KEY_PATH",), hidden=True,
       note=_SSH),
    _f("ssh-server", "Run cloudflared's SSH server.", "bool", default=False,
       env=("TUNNEL_SSH_SERVER",), hidden=True, note=_SSH),
    _f("bastion", "Single origin is a bastion (jump host).", "bool", default=False,
       env=("TUNNEL_BASTION",)),
    _f("proxy-address", _URL_MODE + "listen address of the origin proxy.",
       default="127.0.0.1", env=("TUNNEL_PROXY_ADDRESS",)),
    _f("proxy-port", _URL_MODE + "listen port of the origin proxy.", "int", default=0,
       env=("TUNNEL_PROXY_PORT",)),
    # ConfigureLoggingFlags
    _f("loglevel", "Log level: debug, info, warn, error or fatal.", default="info",
       env=("TUNNEL_LOGLEVEL",)),
    _f("transport-loglevel", "Transport log level (previously --proto-loglevel).",
       default="info", env=("TUNNEL_PROTO_LOGLEVEL", "TUNNEL_TRANSPORT_LOGLEVEL"),
       aliases=("proto-loglevel",),
       note="adit has one log level: transport lines follow --loglevel (QUIC's own at warn "
       "or above)"),
    _f("logfile", "Append JSON logs to this file.", env=("TUNNEL_LOGFILE",)),
    _f("log-directory", "Rotating adit.log in this directory.", env=("TUNNEL_LOGDIRECTORY",)),
    _f("trace-output", "Go runtime trace file written on exit.", env=("TUNNEL_TRACE_OUTPUT",),
       note="adit is not a Go program and writes no runtime trace (profile it with py-spy)"),
    _f("output", "Console log format: default or json.", default="default",
       env=("TUNNEL_MANAGEMENT_OUTPUT", "TUNNEL_LOG_OUTPUT"), aliases=("log-format",)),
    # ConfigureProxyDNSFlags (removed feature, flags kept)
    _f("proxy-dns", "Removed DNS proxy.", "bool", default=False, hidden=True,
       note=_PROXY_DNS),
    _f("proxy-dns-port", "Removed DNS proxy.", "int", hidden=True, note=_PROXY_DNS),
    _f("proxy-dns-address", "Removed DNS proxy.", hidden=True, note=_PROXY_DNS),
    _f("proxy-dns-upstream", "Removed DNS proxy.", "list", hidden=True, note=_PROXY_DNS),
    _f("proxy-dns-max-upstream-conns", "Removed DNS proxy.", "int", hidden=True,
       note=_PROXY_DNS),
    _f("proxy-dns-bootstrap", "Removed DNS proxy.", "list", hidden=True, note=_PROXY_DNS),
    # tunnelFlags
    _f("credentials-file", "Tunnel credentials JSON written by adit tunnel create.",
       env=("TUNNEL_CRED_FILE",), aliases=("cred-file",)),
    _f("is-autoupdated", "Set by cloudflared's updater on the new process.", "bool",
       default=False, hidden=True, note=_AUTOUPDATE),
    _f("edge", "Edge address host:port (repeat, or separate with commas).", "list",
       env=("TUNNEL_EDGE",)),
    _f("region", "Edge region to connect to.", env=("TUNNEL_REGION",),
       note="adit connects to the edges given by --edge or the credentials; there are no "
       "regions"),
    _f("edge-ip-version", "Edge IP version: 4, 6 or auto.", default="auto",
       env=("TUNNEL_EDGE_IP_VERSION",),
       note="adit dials the --edge addresses as given, IPv4 or IPv6 as they resolve"),
    _f("edge-bind-address", "Local IP address of edge connections.",
       env=("TUNNEL_EDGE_BIND_ADDRESS",),
       note="adit lets the kernel choose the source address of edge connections"),
    _f("cacert", "CA (PEM) authenticating the edge's TLS.", env=("TUNNEL_CACERT",)),
    _f("hostname", "Ad-hoc named tunnel: hostname to route.", env=("TUNNEL_HOSTNAME",),
       hidden=True, note=_ADHOC),
    _f("id", "Legacy tunnel instance identifier.", env=("TUNNEL_ID",), hidden=True,
       note=_NO_EFFECT),
    _f("lb-pool", "Ad-hoc named tunnel: load balancer pool.", env=("TUNNEL_LB_POOL",),
       hidden=True, note=_ADHOC),
    _f("api-key", "Deprecated.", env=("TUNNEL_API_KEY",), hidden=True, note=_API_KEY),
    _f("api-email", "Deprecated.", env=("TUNNEL_API_EMAIL",), hidden=True, note=_API_KEY),
    _f("api-ca-key", "Deprecated.", env=("TUNNEL_API_CA_KEY",), hidden=True, note=_API_KEY),
    _f("api-url", "Management API base URL (default: the one in cert.pem).",
       env=("TUNNEL_API_URL",), hidden=True),
    _f("metrics-update-freq", "Tunnel metrics update frequency.", "duration",
       default=Duration.parse("5s"), env=("TUNNEL_METRICS_UPDATE_FREQ",), hidden=True,
       note="adit's metrics are current at every scrape"),
    _f("tag", "KEY=VALUE sent to origins as Cf-Warp-Tag-KEY (repeat).", "list",
       env=("TUNNEL_TAG",)),
    _f("heartbeat-interval", "Idle time before a heartbeat.", "duration",
       default=Duration.parse("5s"), hidden=True, note=_NO_EFFECT),
    _f("heartbeat-count", "Unacknowledged heartbeats before closing.", "int", default=5,
       hidden=True, note=_NO_EFFECT),
    _f("max-edge-addr-retries", "Dial errors of a connection before it may fall back from "
       "QUIC to HTTP/2.", "int", default=8, hidden=True),
    _f("retries", "Backoff doublings; also failures before falling back from QUIC to "
       "HTTP/2.", "int", default=5, env=("TUNNEL_RETRIES",)),
    _f("ha-connections", "Edge connections to hold.", "int", default=4),
    _f("rpc-timeout", "Control RPC timeout.", "duration", default=Duration.parse("5s"),
       hidden=True, note="adit's control RPCs have fixed timeouts"),
    _f("write-stream-timeout", "Stream write timeout (0: none).", "duration",
       default=Duration.parse("0s"), env=("TUNNEL_STREAM_WRITE_TIMEOUT",), hidden=True,
       note="adit applies flow control instead of a write deadline"),
    _f("quic-disable-pmtu-discovery", "Disable QUIC path MTU discovery.", "bool",
       default=False, env=("TUNNEL_DISABLE_QUIC_PMTU",), hidden=True,
       note="adit's QUIC (aioquic) does no path MTU discovery: packets stay at 1200+ bytes"),
    _f("quic-connection-level-flow-control-limit", "QUIC connection flow control limit.",
       "uint", default=30 * (1 << 20), env=("TUNNEL_QUIC_CONN_LEVEL_FLOW_CONTROL_LIMIT",),
       hidden=True, note="adit's QUIC flow control windows are fixed"),
    _f("quic-stream-level-flow-control-limit", "QUIC stream flow control limit.", "uint",
       default=6 * (1 << 20), env=("TUNNEL_QUIC_STREAM_LEVEL_FLOW_CONTROL_LIMIT",),
       hidden=True, note="adit's QUIC flow control windows are fixed"),
    _f("label", "Connector label: its name in tail's host details (else the host name).",
       default=""),
    _f("grace-period", "Drain time on SIGTERM/SIGINT (at most 3m).", "duration",
       default=Duration.parse("30s"), env=("TUNNEL_GRACE_PERIOD",)),
    _f("compression-quality", "Cross-stream compression (removed).", "int", default=0,
       env=("TUNNEL_COMPRESSION_LEVEL",), hidden=True, note=_NO_EFFECT),
    _f("use-reconnect-token", "Reconnect token flow.", "bool", default=True,
       env=("TUNNEL_USE_RECONNECT_TOKEN",), hidden=True, note=_NO_EFFECT),
    _f("dial-edge-timeout", "Edge dial timeout.", "duration", default=Duration.parse("15s"),
       env=("DIAL_EDGE_TIMEOUT",), hidden=True,
       note="adit's edge dial timeout is fixed, as cloudflared's really is (15s)"),
    _f("stdin-control", "Control the process with commands on stdin.", "bool",
       default=False, env=("STDIN_CONTROL",), hidden=True,
       note="adit takes no commands on stdin; use signals (SIGHUP reloads, SIGTERM drains)"),
    _f("name", "Ad-hoc named tunnel: create, route and run NAME.", env=("TUNNEL_NAME",),
       aliases=("n",), hidden=True, note=_ADHOC),
    _f("ui", "Deprecated terminal UI.", "bool", default=False, hidden=True,
       note=_NO_EFFECT),
    _f("quick-service", "Quick tunnel service URL.", default="https://api.trycloudflare.com",
       hidden=True,
       note="adit's quick tunnels are served by an embedded edge on loopback, no service"),
    _f("max-fetch-size", "Most results fetched from the API in listings.", "int",
       env=("TUNNEL_MAX_FETCH_SIZE",), hidden=True,
       note="adit's management commands fetch every page"),
    _f("post-quantum", "Post-quantum key exchange (X25519MLKEM768, QUIC only).", "bool",
       default=False, env=("TUNNEL_POST_QUANTUM",), aliases=("pq",)),
    _f("management-diagnostics", "Diagnostics over the management service.", "bool",
       default=True, env=("TUNNEL_MANAGEMENT_DIAGNOSTICS",)),
    _f("protocol", "Edge transport: auto, http2 or quic (auto: QUIC, falling back to "
       "HTTP/2).", default="auto", env=("TUNNEL_TRANSPORT_PROTOCOL",), aliases=("p",)),
    _f("overwrite-dns", "Ad-hoc named tunnel: overwrite DNS records.", "bool", default=False,
       env=("TUNNEL_FORCE_PROVISIONING_DNS",), aliases=("f",), hidden=True, note=_ADHOC),
    # buildRunCommand (cloudflared: tunnel run only)
    _f("credentials-contents", "Tunnel credentials JSON given inline.",
       env=("TUNNEL_CRED_CONTENTS",)),
    _f("features", "Opt-in feature names (repeat).", "list", aliases=("F",)),
    _f("token", "Tunnel token (takes precedence over credentials).", env=("TUNNEL_TOKEN",)),
    _f("token-file", "File holding a tunnel token.", env=("TUNNEL_TOKEN_FILE",)),
    _f("icmpv4-src", "Source address of proxied ICMPv4.", env=("TUNNEL_ICMPV4_SRC",),
       note="adit proxies no ICMP (private-network ping); TCP and UDP only"),
    _f("icmpv6-src", "Source address of proxied ICMPv6.", env=("TUNNEL_ICMPV6_SRC",),
       note="adit proxies no ICMP (private-network ping); TCP and UDP only"),
    _f("max-active-flows", "Most private-network flows at once (0: no limit; per worker).",
       "uint", env=("TUNNEL_MAX_ACTIVE_FLOWS",)),
    _f("dns-resolver-addrs", "ip:port resolvers of the virtual DNS origin (repeat).", "list",
       env=("TUNNEL_DNS_RESOLVER_ADDRS",),
       note="adit's private-network DNS goes to the system resolver"),
    # adit only
    _f("workers", "Worker processes (adit only; default: min(usable CPUs, "
       "--ha-connections)).", "uint"),
    _f("worker-timeout", "A worker without a heartbeat this long is replaced (adit only).",
       "duration", default=Duration.parse("10s"), env=("TUNNEL_WORKER_TIMEOUT",)),
)  # fmt: skip

_EXPLICIT: Final = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


class _ListOption(click.Option):
    """A repeatable option whose environment variable is split on commas (Go's
    ``StringSliceFlag``: ``TUNNEL_EDGE=a:7844,b:7844``), not on whitespace as click does."""

    def value_from_envvar(self, ctx: click.Context) -> Any:
        raw = self.resolve_envvar_value(ctx)
        if raw is None:
            return None
        return tuple(part.strip() for part in str(raw).split(",") if part.strip())


_TYPES: Final[dict[str, Any]] = {
    "int": int,
    "uint": click.IntRange(min=0),
    "duration": DURATION,
}


def _option(flag: TunnelFlag, *, hide: bool) -> Callable[[F], F]:
    kwargs: dict[str, Any] = {
        # A flag adit does not act on says so where it is described, not only when used.
        "help": flag.help if flag.note is None else f"{flag.help} Here: {flag.note}.",
        "hidden": hide or flag.hidden,
        "envvar": list(flag.env) or None,
        "show_envvar": bool(flag.env),
    }
    opts = flag.opts
    if flag.kind == "bool":
        kwargs.update(is_flag=True, default=bool(flag.default))
        if flag.default is True:
            # Go's --name=false is the only way to turn it off (go_style_args spells it so).
            opts = [f"{opts[0]}/--no-{flag.name}", *opts[1:]]
    elif flag.kind == "list":
        kwargs.update(multiple=True, cls=_ListOption)
    else:
        # A duration's default as its text: the help shows it, DURATION converts it.
        default = flag.default
        kwargs["default"] = default.text if isinstance(default, Duration) else default
        if flag.kind in _TYPES:
            kwargs["type"] = _TYPES[flag.kind]
        kwargs["show_default"] = default not in (None, "")
    return click.option(*opts, flag.param, **kwargs)


def tunnel_options(*, hide: bool = False) -> Callable[[F], F]:
    """A decorator adding every tunnel flag to a click command (``hide``: none in its help)."""

    def decorate(command: F) -> F:
        for flag in reversed(TUNNEL_FLAGS):
            command = _option(flag, hide=hide)(command)
        return command

    return decorate


def _lineage(ctx: click.Context) -> Iterator[click.Context]:
    current: click.Context | None = ctx
    while current is not None:
        yield current
        current = current.parent


def _source(ctx: click.Context, param: str) -> ParameterSource | None:
    if not any(p.name == param for p in ctx.command.params):
        return None
    return ctx.get_parameter_source(param)


def is_set(ctx: click.Context, param: str) -> bool:
    """Whether flag ``param`` was given on any level's command line or by its env var."""
    return any(_source(c, param) in _EXPLICIT for c in _lineage(ctx))


def is_used(ctx: click.Context, flag: TunnelFlag, loaded: LoadedConfig | None) -> bool:
    """Whether ``flag`` was set: any level's command line, its env var, or the file (under
    its name or a long alias; altsrc skips empty values)."""
    if is_set(ctx, flag.param):
        return True
    keys = [flag.name, *(a for a in flag.aliases if len(a) > 1)]
    return any(file_value(loaded, key) not in (None, "", []) for key in keys)


def flag_notes(ctx: click.Context, loaded: LoadedConfig | None) -> list[str]:
    """One line for each flag used (command line, env or file) that adit does not act on."""
    return [
        f"--{flag.name}: {flag.note}"
        for flag in TUNNEL_FLAGS
        if flag.note is not None and is_used(ctx, flag, loaded)
    ]


def explicit_argv(ctx: click.Context, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """The flags given on the command line of ``ctx`` and its parents, innermost value for
    each, as arguments again (the quick tunnel hands them on to ``tunnel run``)."""
    argv: list[str] = []
    for flag in TUNNEL_FLAGS:
        if flag.param in skip:
            continue
        for level in _lineage(ctx):
            if _source(level, flag.param) is not ParameterSource.COMMANDLINE:
                continue
            argv += _as_argv(flag, level.params[flag.param])
            break
    return argv


def _as_argv(flag: TunnelFlag, value: Any) -> list[str]:
    option = f"--{flag.name}"
    if flag.kind == "bool":
        return [option] if value else []
    if flag.kind == "list":
        return [part for item in value for part in (option, str(item))]
    if isinstance(value, Duration):
        return [option, value.text]
    return [option, str(value)]


_LONG_NAMES: Final = {
    name: flag
    for flag in TUNNEL_FLAGS
    for name in (flag.name, *(a for a in flag.aliases if len(a) > 1))
}
#: Go's ``strconv.ParseBool`` spellings.
_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_style_args(args: list[str]) -> list[str]:
    """``args`` with Go's flag spellings of the tunnel flags made click's.

    cloudflared parses flags with Go's ``flag`` package, which takes one dash as well as two
    (``-config FILE``, ``-no-autoupdate``) and a value on a boolean (``--no-autoupdate=true``,
    ``--hello-world=false``); command lines written for it keep working here. Only tunnel
    flag names are touched, and nothing after ``--``.
    """
    out: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            out += args[index:]
            break
        spelled = _go_spelling(arg)
        if spelled is not None:
            out.append(spelled)
    return out


def _go_spelling(arg: str) -> str | None:
    """One argument in click's spelling; ``None``: a boolean set to false (dropped)."""
    single_dash = len(arg) > 2 and arg[0] == "-" and arg[1] != "-"
    if single_dash and arg[1:].partition("=")[0] in _LONG_NAMES:
        arg = "-" + arg
    if not arg.startswith("--") or "=" not in arg:
        return arg
    name, _, value = arg[2:].partition("=")
    flag = _LONG_NAMES.get(name)
    if flag is None or flag.kind != "bool":
        return arg
    if value in _TRUE:
        return f"--{name}"
    if value in _FALSE and flag.default is not True:
        return None  # off, as without it
    if value in _FALSE:
        return f"--no-{flag.name}"  # on by default: the option's off switch (``_option``)
    return arg


def is_flag_name(key: str) -> bool:
    """Whether config key ``key`` is a tunnel flag's name (or a long alias)."""
    return key in _LONG_NAMES
