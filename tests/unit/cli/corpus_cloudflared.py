"""Real-world cloudflared command lines and what cloudflared would run them with.

Each :class:`Case` is an ``adit`` command line (``cloudflared`` replaced), its environment and
config file, and the settings fields cloudflared would use, derived from its source:

* the app-level flags are ``tunnel.Flags()`` (cmd/cloudflared/main.go), so ``cloudflared
  --no-autoupdate tunnel run`` (the systemd unit written by ``service install``,
  cmd/cloudflared/linux_service.go ``ExecStart={{ .Path }} --no-autoupdate ...``) and
  ``cloudflared tunnel --no-autoupdate run --token T`` (the dashboard's Docker command) are
  the same run; a child command reads its parents' flags (urfave/cli ``lookupFlagSet``);
* a flag's value: command line, else its ``EnvVars``, else the config-file key of the same
  name (altsrc ``ApplyInputSourceValue``), else its ``Value`` (cmd/cloudflared/tunnel/cmd.go
  ``tunnelFlags``, ``configureCloudflaredFlags``, ``configureProxyFlags``, cliutil/logger.go
  ``ConfigureLoggingFlags``, subcommands.go ``buildRunCommand``);
* the ``--url``-mode flags set ``originRequest`` keys only when set (ingress/config.go
  ``originRequestFromSingleRule``, ``c.IsSet``); ``--socks5`` sets ``proxyType: socks``.

adit accepts every flag at every level (cloudflared refuses ``tunnel run --loglevel``); when
a flag is given at several levels the innermost wins. Placeholders in argv, env and config:
``{TOKEN}`` (a token whose credentials carry four edges), ``{TUNNEL_ID}``, ``{CRED}`` (a
credentials file), ``{CERTDIR}`` (a directory with cert.pem and ``<TUNNEL_ID>.json``),
``{CA}`` (a PEM file), ``{TMP}`` (a scratch directory), ``{CONFIG}`` (the case's config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adit.cli.tunnel_flags import TUNNEL_FLAGS, TunnelFlag

TUNNEL_ID = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
#: The edges in ``{TOKEN}``: four, so the default ``--ha-connections 4`` is kept.
TOKEN_EDGES = ("127.0.0.1:7844", "127.0.0.1:7845", "127.0.0.1:7846", "127.0.0.1:7847")
CATCH_ALL = "ingress:\n  - service: http_status:404\n"


@dataclass(frozen=True)
class Case:
    """One command line; ``expect`` maps dotted settings fields to cloudflared's values."""

    name: str
    argv: tuple[str, ...]
    expect: dict[str, object]
    env: dict[str, str] = field(default_factory=dict)
    config: str | None = None
    #: Flags (names) whose informational line must appear, once each; no other may.
    notes: tuple[str, ...] = ()


# -- real-world command lines, each one cloudflared takes (checked against its binary) -----

REAL_WORLD: tuple[Case, ...] = (
    Case(
        "dashboard docker command",
        ("tunnel", "--no-autoupdate", "run", "--token", "{TOKEN}"),
        {"tunnel_id": TUNNEL_ID, "ha_connections": 4, "edges": TOKEN_EDGES},
        notes=("no-autoupdate",),
    ),
    Case(
        "systemd unit of service install with a token",
        ("--no-autoupdate", "tunnel", "run", "--token", "{TOKEN}"),
        {"tunnel_id": TUNNEL_ID, "metrics_address": "localhost:0", "log.level": "info"},
        notes=("no-autoupdate",),
    ),
    Case(
        "systemd unit of service install with a config file",
        ("--no-autoupdate", "--config", "{CONFIG}", "tunnel", "run"),
        {"tunnel_id": TUNNEL_ID, "config_path": "{CONFIG}", "ingress.rules": 2},
        config=(
            "tunnel: " + TUNNEL_ID + "\ncredentials-file: {CRED}\n"
            "ingress:\n  - hostname: app.example.com\n    service: http://127.0.0.1:8000\n"
            "  - service: http_status:404\n"
        ),
        notes=("no-autoupdate",),
    ),
    Case(
        "service unit form with --config first",
        ("--config", "{CONFIG}", "--no-autoupdate", "tunnel", "run"),
        {"tunnel_id": TUNNEL_ID, "config_path": "{CONFIG}", "protocol": "http2"},
        config="tunnel: " + TUNNEL_ID + "\ncredentials-file: {CRED}\nprotocol: http2\n"
        + CATCH_ALL,
        notes=("no-autoupdate",),
    ),
    Case(
        "OpenRC conf.d with autoupdate",
        ("--autoupdate-freq", "24h0m0s", "tunnel", "run", "--token", "{TOKEN}"),
        {"tunnel_id": TUNNEL_ID},
        notes=("autoupdate-freq",),
    ),
    Case(
        "README: stock cloudflared against an adit edge",
        ("tunnel", "--edge", "127.0.0.1:9443", "--cacert", "{CA}", "run",
         "--credentials-file", "{CRED}", TUNNEL_ID),
        {"tunnel_id": TUNNEL_ID, "edges": ("127.0.0.1:9443",), "edge_ca_pem": "{CA_TEXT}",
         "ha_connections": 1},
    ),
    Case(
        "edge, cacert and protocol before run",
        ("tunnel", "--edge", "127.0.0.1:9443", "--edge", "127.0.0.1:9444", "--cacert", "{CA}",
         "--protocol", "http2", "run", "--token", "{TOKEN}"),
        {"edges": ("127.0.0.1:9443", "127.0.0.1:9444"), "protocol": "http2",
         "ha_connections": 2},
    ),
    Case(
        "previously silently ignored: metrics and loglevel before run",
        ("tunnel", "--metrics", "127.0.0.1:29100", "--loglevel", "debug", "run",
         "--credentials-file", "{CRED}", TUNNEL_ID),
        {"metrics_address": "127.0.0.1:29100", "log.level": "debug", "tunnel_id": TUNNEL_ID},
    ),
    Case(
        "kubernetes example: config and metrics before run",
        ("tunnel", "--config", "{CONFIG}", "--metrics", "0.0.0.0:2000", "run"),
        {"metrics_address": "0.0.0.0:2000", "tunnel_id": TUNNEL_ID, "ingress.rules": 1},
        config="tunnel: " + TUNNEL_ID + "\ncredentials-file: {CRED}\nno-autoupdate: true\n"
        + CATCH_ALL,
        notes=("no-autoupdate",),
    ),
    Case(
        "docker compose: token in the environment",
        ("tunnel", "--no-autoupdate", "run"),
        {"tunnel_id": TUNNEL_ID, "edges": TOKEN_EDGES},
        env={"TUNNEL_TOKEN": "{TOKEN}"},
        notes=("no-autoupdate",),
    ),
    Case(
        "env only: token, edge, metrics, loglevel, protocol, grace period",
        ("tunnel", "run"),
        {"edges": ("127.0.0.1:9001", "127.0.0.1:9002"), "metrics_address": "127.0.0.1:9100",
         "log.level": "debug", "protocol": "quic", "grace_period": 5.0, "ha_connections": 2},
        env={"TUNNEL_TOKEN": "{TOKEN}", "TUNNEL_EDGE": "127.0.0.1:9001,127.0.0.1:9002",
             "TUNNEL_METRICS": "127.0.0.1:9100", "TUNNEL_LOGLEVEL": "debug",
             "TUNNEL_TRANSPORT_PROTOCOL": "quic", "TUNNEL_GRACE_PERIOD": "5s",
             "NO_AUTOUPDATE": "true"},
        notes=("no-autoupdate",),
    ),
    Case(
        "env only: credentials file and tunnel from TUNNEL_CRED_FILE and the argument",
        ("tunnel", "run", TUNNEL_ID),
        {"tunnel_id": TUNNEL_ID, "credentials_path": "{CRED}"},
        env={"TUNNEL_CRED_FILE": "{CRED}"},
    ),
    Case(
        "env only: tags split on commas",
        ("tunnel", "run", "--token", "{TOKEN}"),
        {"tags": {"env": "prod", "team": "web"}},
        env={"TUNNEL_TAG": "env=prod,team=web"},
    ),
    Case(
        "config only: everything in config.yml",
        ("tunnel", "--config", "{CONFIG}", "run"),
        {"tunnel_id": TUNNEL_ID, "metrics_address": "127.0.0.1:2001", "log.level": "debug",
         "protocol": "http2", "retries": 3, "grace_period": 10.0, "ha_connections": 2,
         "edges": ("127.0.0.1:9001", "127.0.0.1:9002"), "tags": {"a": "b"}},
        config=(
            "tunnel: " + TUNNEL_ID + "\ncredentials-file: {CRED}\nmetrics: 127.0.0.1:2001\n"
            "loglevel: debug\nprotocol: http2\nretries: 3\ngrace-period: 10s\n"
            "ha-connections: 2\nedge: [127.0.0.1:9001, 127.0.0.1:9002]\ntag: [a=b]\n"
            "no-autoupdate: true\nproxy-dns: true\n" + CATCH_ALL
        ),
        notes=("no-autoupdate", "proxy-dns"),
    ),
    Case(
        "origincert from the global level finds <UUID>.json beside cert.pem",
        ("--origincert", "{CERTDIR}/cert.pem", "tunnel", "run", TUNNEL_ID),
        {"tunnel_id": TUNNEL_ID, "credentials_path": "{CERTDIR}/" + TUNNEL_ID + ".json"},
    ),
    Case(
        "origincert from the tunnel level",
        ("tunnel", "--origincert", "{CERTDIR}/cert.pem", "run", TUNNEL_ID),
        {"credentials_path": "{CERTDIR}/" + TUNNEL_ID + ".json"},
    ),
    Case(
        "quick tunnel style flags with a token",
        ("tunnel", "--url", "http://127.0.0.1:8081", "--http-host-header", "app.local", "run",
         "--token", "{TOKEN}"),
        {"ingress.cli_url": "http://127.0.0.1:8081",
         "ingress.origin_request": {"httpHostHeader": "app.local"}},
    ),
    Case(
        "ad-hoc named tunnel flags are explained, not run",
        ("tunnel", "-n", "web", "--hostname", "app.example.com", "-f", "run", "--token",
         "{TOKEN}"),
        {"tunnel_id": TUNNEL_ID},
        notes=("name", "hostname", "overwrite-dns"),
    ),
    Case(
        "no-effect flags where cloudflared takes them",
        ("--no-autoupdate", "--autoupdate-freq", "12h", "tunnel", "--edge-ip-version", "4",
         "--region", "us", "--no-prechecks", "--label", "rack-1", "--management-diagnostics",
         "run", "--token", "{TOKEN}"),
        {"tunnel_id": TUNNEL_ID, "label": "rack-1", "management_diagnostics": True},
        notes=("no-autoupdate", "autoupdate-freq", "edge-ip-version", "region", "no-prechecks"),
    ),
    Case(
        "run's aliases and tunnel's log format",
        ("tunnel", "--output", "json", "run", "--pq", "-F",
         "support_datagram_v3_2", "--cred-file", "{CRED}", TUNNEL_ID),
        {"protocol": "quic", "post_quantum": True, "features": ("support_datagram_v3_2",),
         "log.output": "json", "credentials_path": "{CRED}"},
    ),
)  # fmt: skip

#: Lines cloudflared itself refuses or reads otherwise (a run-only flag before run, a flag
#: of tunnel after run, a config key under a flag's alias), which adit takes as meant.
ADIT_EXTENSIONS: tuple[Case, ...] = (
    Case(
        "config keys under their aliases: cred-file, proto-loglevel",
        ("tunnel", "--config", "{CONFIG}", "run", TUNNEL_ID),
        {"credentials_path": "{CRED}"},
        config="cred-file: {CRED}\nproto-loglevel: debug\n" + CATCH_ALL,
        notes=("transport-loglevel",),
    ),
    Case(
        "credentials contents from the global level",
        ("--credentials-contents", "{CRED_TEXT}", "tunnel", "run", TUNNEL_ID),
        {"tunnel_id": TUNNEL_ID, "credentials_path": None},
    ),
    Case(
        "token file from the tunnel level",
        ("tunnel", "--token-file", "{TOKEN_FILE}", "run"),
        {"tunnel_id": TUNNEL_ID, "credentials_path": "{TOKEN_FILE}"},
    ),
    Case(
        "aliases: -p, --pq, -F, --log-format, --cred-file",
        ("-p", "quic", "tunnel", "--pq", "-F", "support_datagram_v3_2", "run", "--log-format",
         "json", "--cred-file", "{CRED}", TUNNEL_ID),
        {"protocol": "quic", "post_quantum": True, "features": ("support_datagram_v3_2",),
         "log.output": "json", "credentials_path": "{CRED}"},
    ),
    Case(
        "every no-effect flag of cloudflared's service and container docs",
        ("--no-autoupdate", "--autoupdate-freq", "12h", "tunnel", "--edge-ip-version", "4",
         "--region", "us", "--no-prechecks", "--management-diagnostics", "run",
         "--label", "rack-1", "--token", "{TOKEN}"),
        {"tunnel_id": TUNNEL_ID, "label": "rack-1", "management_diagnostics": True},
        notes=("no-autoupdate", "autoupdate-freq", "edge-ip-version", "region", "no-prechecks"),
    ),
)  # fmt: skip

#: The credential flags at each level (cloudflared: run only, or tunnel for --cred-file;
#: adit: anywhere). Expected: the tunnel, and the file the supervisor watches for rotation.
_CREDENTIALS: tuple[tuple[tuple[str, ...], tuple[str, ...], object], ...] = (
    (("--token", "{TOKEN}"), (), None),
    (("--token-file", "{TOKEN_FILE}"), (), "{TOKEN_FILE}"),
    (("--credentials-file", "{CRED}"), (TUNNEL_ID,), "{CRED}"),
    (("--cred-file", "{CRED}"), (TUNNEL_ID,), "{CRED}"),
    (("--credentials-contents", "{CRED_TEXT}"), (TUNNEL_ID,), None),
    (("--origincert", "{CERTDIR}/cert.pem"), (TUNNEL_ID,), "{CERTDIR}/" + TUNNEL_ID + ".json"),
)
CREDENTIALS: tuple[Case, ...] = tuple(
    Case(f"{given[0]} at {position}", argv, {"tunnel_id": TUNNEL_ID, "credentials_path": path})
    for given, ref, path in _CREDENTIALS
    for position, argv in (
        ("global", (*given, "tunnel", "run", *ref)),
        ("tunnel", ("tunnel", *given, "run", *ref)),
        ("run", ("tunnel", "run", *given, *ref)),
    )
)

#: Go's flag package takes one dash, and a value on a boolean (cloudflared's own docs and
#: many hand-written units use both).
GO_SPELLINGS: tuple[Case, ...] = (
    Case("single-dash long flags", ("-config", "{CONFIG}", "tunnel", "-no-autoupdate", "run",
                                    "-token", "{TOKEN}", "-loglevel=debug"),
         {"config_path": "{CONFIG}", "log.level": "debug", "retries": 2},
         config="retries: 2\n" + CATCH_ALL, notes=("no-autoupdate",)),
    Case("booleans with a value", ("--no-autoupdate=true", "tunnel", "--hello-world=false",
                                   "--post-quantum=True", "run", "--token", "{TOKEN}",
                                   "--management-diagnostics=false"),
         {"post_quantum": True, "ingress.cli_hello_world": False,
          "management_diagnostics": False},
         notes=("no-autoupdate",)),
)  # fmt: skip

# -- precedence ---------------------------------------------------------------------------------

PRECEDENCE: tuple[Case, ...] = (
    Case("run beats tunnel beats global",
         ("--loglevel", "error", "tunnel", "--loglevel", "warn", "run", "--loglevel", "debug",
          "--token", "{TOKEN}"), {"log.level": "debug"}),
    Case("tunnel beats global", ("--loglevel", "error", "tunnel", "--loglevel", "warn", "run",
                                 "--token", "{TOKEN}"), {"log.level": "warn"}),
    Case("global alone", ("--loglevel", "error", "tunnel", "run", "--token", "{TOKEN}"),
         {"log.level": "error"}),
    Case("any command line beats env", ("--loglevel", "warn", "tunnel", "run", "--token",
                                        "{TOKEN}"),
         {"log.level": "warn"}, env={"TUNNEL_LOGLEVEL": "error"}),
    Case("env beats the file", ("tunnel", "--config", "{CONFIG}", "run", "--token", "{TOKEN}"),
         {"log.level": "error"}, env={"TUNNEL_LOGLEVEL": "error"},
         config="loglevel: debug\n" + CATCH_ALL),
    Case("the file beats the default", ("--config", "{CONFIG}", "tunnel", "run", "--token",
                                        "{TOKEN}"),
         {"log.level": "debug"}, config="loglevel: debug\n" + CATCH_ALL),
    Case("defaults", ("tunnel", "run", "--token", "{TOKEN}"),
         {"log.level": "info", "metrics_address": "localhost:0", "protocol": "auto",
          "grace_period": 30.0, "retries": 5, "ha_connections": 4,
          "max_edge_addr_retries": 8, "post_quantum": False, "tags": {}, "features": (),
          "max_active_flows": 0, "pidfile": None, "log.output": "default",
          "ingress.origin_request": {}, "ingress.cli_url": None}),
    Case("innermost list wins whole", ("tunnel", "--edge", "127.0.0.1:1", "--edge",
                                       "127.0.0.1:2", "run", "--edge", "127.0.0.1:3",
                                       "--token", "{TOKEN}"),
         {"edges": ("127.0.0.1:3",)}),
    Case("--config at run beats --config at tunnel",
         ("tunnel", "--config", "{TMP}/nonexistent.yml", "run", "--config", "{CONFIG}",
          "--token", "{TOKEN}"),
         {"config_path": "{CONFIG}", "retries": 2}, config="retries: 2\n" + CATCH_ALL),
)  # fmt: skip

# -- every flag in every position ----------------------------------------------------------------

#: For each flag adit acts on: a value and the settings field and value cloudflared would run
#: with. Flags resolved elsewhere (credentials, config, the management API) have cases above.
ACTING: dict[str, tuple[str | None, str, object]] = {
    "metrics": ("127.0.0.1:29101", "metrics_address", "127.0.0.1:29101"),
    "pidfile": ("{TMP}/adit.pid", "pidfile", "{TMP}/adit.pid"),
    "url": ("http://127.0.0.1:8081", "ingress.cli_url", "http://127.0.0.1:8081"),
    "hello-world": (None, "ingress.cli_hello_world", True),
    "socks5": (None, "ingress.origin_request.proxyType", "socks"),
    "proxy-connect-timeout": ("7s", "ingress.origin_request.connectTimeout", "7s"),
    "proxy-tls-timeout": ("8s", "ingress.origin_request.tlsTimeout", "8s"),
    "proxy-tcp-keepalive": ("9s", "ingress.origin_request.tcpKeepAlive", "9s"),
    "proxy-no-happy-eyeballs": (None, "ingress.origin_request.noHappyEyeballs", True),
    "proxy-keepalive-connections": ("7", "ingress.origin_request.keepAliveConnections", 7),
    "proxy-keepalive-timeout": ("11s", "ingress.origin_request.keepAliveTimeout", "11s"),
    "http-host-header": ("h.example", "ingress.origin_request.httpHostHeader", "h.example"),
    "origin-server-name": ("o.example", "ingress.origin_request.originServerName", "o.example"),
    "unix-socket": ("{TMP}/origin.sock", "ingress.cli_unix_socket", "{TMP}/origin.sock"),
    "origin-ca-pool": ("{CA}", "ingress.origin_request.caPool", "{CA}"),
    "no-tls-verify": (None, "ingress.origin_request.noTLSVerify", True),
    "no-chunked-encoding": (None, "ingress.origin_request.disableChunkedEncoding", True),
    "http2-origin": (None, "ingress.origin_request.http2Origin", True),
    "bastion": (None, "ingress.cli_bastion", True),
    "proxy-address": ("127.0.0.2", "ingress.origin_request.proxyAddress", "127.0.0.2"),
    "proxy-port": ("1080", "ingress.origin_request.proxyPort", 1080),
    "loglevel": ("debug", "log.level", "debug"),
    "logfile": ("{TMP}/adit.log", "log.logfile", "{TMP}/adit.log"),
    "log-directory": ("{TMP}/logs", "log.log_directory", "{TMP}/logs"),
    "output": ("json", "log.output", "json"),
    "edge": ("127.0.0.1:9000", "edges", ("127.0.0.1:9000",)),
    "cacert": ("{CA}", "edge_ca_pem", "{CA_TEXT}"),
    "tag": ("k=v", "tags", {"k": "v"}),
    "max-edge-addr-retries": ("3", "max_edge_addr_retries", 3),
    "retries": ("7", "retries", 7),
    "ha-connections": ("2", "ha_connections", 2),
    "grace-period": ("45s", "grace_period", 45.0),
    "post-quantum": (None, "post_quantum", True),
    "protocol": ("http2", "protocol", "http2"),
    "features": ("support_datagram_v3_2", "features", ("support_datagram_v3_2",)),
    "max-active-flows": ("9", "max_active_flows", 9),
    "workers": ("2", "workers", 2),
    "worker-timeout": ("20s", "worker_timeout", 20.0),
    "label": ("rack-1", "label", "rack-1"),
    "management-hostname": ("Mgmt.Example.test", "management_hostname", "mgmt.example.test"),
    # On by default: given bare it stays on (the off switch is --management-diagnostics=false,
    # GO_SPELLINGS).
    "management-diagnostics": (None, "management_diagnostics", True),
}
#: Acting flags covered by the cases above instead (they choose credentials or the file) or
#: by the management commands (``api-url``: the API that resolves a tunnel name).
ELSEWHERE = frozenset(
    {"config", "origincert", "credentials-file", "credentials-contents", "token", "token-file",
     "api-url"}
)  # fmt: skip
#: cloudflared flags that are not altsrc flags, so not config keys (subcommands.go).
NOT_CONFIG_KEYS = frozenset(
    {"config", "max-active-flows", "dns-resolver-addrs", "icmpv4-src", "icmpv6-src",
     "overwrite-dns"}
)  # fmt: skip

#: Values for flags adit does not act on but checks as cloudflared does.
NOTED_VALUES = {"edge-ip-version": "6"}
SINGLE_ORIGIN = frozenset({"url", "hello-world", "unix-socket", "bastion"})
_SAMPLE = {"str": "x", "int": "3", "uint": "3", "duration": "1m", "list": "a"}


def _flag_argv(flag: TunnelFlag, value: str | None) -> tuple[str, ...]:
    if flag.kind == "bool":
        return (f"--{flag.name}",)
    return (f"--{flag.name}", value or _SAMPLE[flag.kind])


def _yaml(flag: TunnelFlag, value: str | None) -> str:
    if flag.kind == "bool":
        return f"{flag.name}: true\n"
    text = value or _SAMPLE[flag.kind]
    if flag.kind == "list":
        return f"{flag.name}: [{text}]\n"
    if flag.kind in ("int", "uint"):
        return f"{flag.name}: {text}\n"
    return f'{flag.name}: "{text}"\n'


def _env(flag: TunnelFlag, value: str | None) -> str:
    return "true" if flag.kind == "bool" else value or _SAMPLE[flag.kind]


def every_flag_cases() -> list[Case]:
    """Every flag at the global, ``tunnel`` and ``run`` levels, in its env var and as a config
    key: an acting flag changes its settings field, any other logs its line."""
    cases: list[Case] = []
    token = ("--token", "{TOKEN}")
    for flag in TUNNEL_FLAGS:
        if flag.name in ELSEWHERE:
            continue
        if flag.note is None:
            value, field_name, expected = ACTING[flag.name]
            expect: dict[str, object] = {field_name: expected}
            notes: tuple[str, ...] = ()
        else:
            value, expect = NOTED_VALUES.get(flag.name), {"tunnel_id": TUNNEL_ID}
            notes = (flag.name,)
        given = _flag_argv(flag, value)
        positions = {
            "global": (*given, "tunnel", "run", *token),
            "tunnel": ("tunnel", *given, "run", *token),
            "run": ("tunnel", "run", *given, *token),
        }
        for position, argv in positions.items():
            cases.append(Case(f"--{flag.name} at {position}", argv, expect, notes=notes))
        for env in flag.env:
            cases.append(
                Case(f"--{flag.name} from {env}", ("tunnel", "run", *token), expect,
                     env={env: _env(flag, value)}, notes=notes)
            )  # fmt: skip
        if flag.name not in NOT_CONFIG_KEYS:
            # A file needs ingress rules or a single origin (validation.py, cloudflared's
            # "The config file doesn't contain any ingress rules").
            if flag.name in SINGLE_ORIGIN:
                rest = ""
            elif "ingress." in next(iter(expect)):
                rest = "url: http://127.0.0.1:8081\n"
            else:
                rest = CATCH_ALL
            cases.append(
                Case(f"--{flag.name} from the config file",
                     ("tunnel", "--config", "{CONFIG}", "run", *token), expect,
                     config=_yaml(flag, value) + rest, notes=notes)
            )  # fmt: skip
    return cases
