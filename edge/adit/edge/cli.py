"""``adit edge``: run the edge, or administer its state (accounts, tokens, CA)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from adit.config.duration import format_go_duration, parse_go_duration
from adit.edge.admin import ADMIN_COMMANDS, DEFAULT_STATE_DIR
from adit.edge.cert_admin import cert_group
from adit.edge.flag_checks import DIAL_ADDRESS, LISTEN_ADDRESS, check_state_dir
from adit.edge.flow_limits import FlowLimits
from adit.edge.limits import Limits

if TYPE_CHECKING:
    from adit.edge.route_dns import PublishedEdge


class _Seconds(click.ParamType[float, "str | float"]):
    """A Go duration (``30s``, ``1m30s``), as cloudflared's flags take them, in seconds."""

    name = "duration"

    def convert(
        self, value: str | float, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_go_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value} is not a positive duration", param, ctx)
        return seconds


_SECONDS = _Seconds()
_LIMITS = Limits()
_FLOWS = FlowLimits()


class Seconds(click.ParamType[float, "str | float"]):
    """A Go duration (``1s``, ``1500ms``, ``1m30s``) as seconds."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_go_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SECONDS = Seconds()


@click.group("edge", invoke_without_command=True)
@click.option(
    "--state-dir",
    envvar="ADIT_EDGE_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    # Not file_okay=False: check_state_dir refuses a file, with the other unusable paths.
    type=click.Path(path_type=Path),
    help="Where the store and the CA live (created on first start).",
)
@click.option(
    "--tunnel-listen",
    multiple=True,
    type=LISTEN_ADDRESS,
    default=["0.0.0.0:7844"],
    show_default=True,
    help="Tunnel listener for connectors (TLS). Repeatable.",
)
@click.option(
    "--http-listen",
    multiple=True,
    type=LISTEN_ADDRESS,
    default=["0.0.0.0:8080"],
    show_default=True,
    help="Public HTTP listener. Repeatable.",
)
@click.option(
    "--https-listen",
    multiple=True,
    type=LISTEN_ADDRESS,
    default=[],
    help="Public HTTPS listener (certificates from the edge CA by SNI). Repeatable.",
)
@click.option(
    "--api-listen",
    multiple=True,
    type=LISTEN_ADDRESS,
    default=["127.0.0.1:7843"],
    show_default=True,
    help="Management API listener (HTTPS, token-authenticated). Repeatable.",
)
@click.option("--location", default="adit", show_default=True, help="This edge's location name.")
@click.option(
    "--advertise",
    multiple=True,
    type=DIAL_ADDRESS,
    help="host:port connectors should dial (written into credentials). Repeatable.",
)
@click.option(
    "--api-name",
    "api_names",
    multiple=True,
    default=["localhost"],
    show_default=True,
    help="DNS name in the API certificate. Repeatable.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the bound addresses here (JSON) once listening.",
)
@click.option(
    "--quick-tunnel",
    "quick_tunnel_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    hidden=True,
    help="Provision a throwaway tunnel on <random>.localhost; write its token here.",
)
@click.option(
    "--store-timeout",
    envvar="ADIT_EDGE_STORE_TIMEOUT",
    type=click.FloatRange(min=0.1, max=60),
    default=2.0,
    show_default=True,
    help="Seconds an API write waits for the store's write lock (held by another process) "
    "before answering 503. Env: ADIT_EDGE_STORE_TIMEOUT.",
)
@click.option(
    "--tunnel-ping-interval",
    type=SECONDS,
    envvar="ADIT_EDGE_TUNNEL_PING_INTERVAL",
    default="1s",
    show_default=True,
    help="PING a connector connection after this much silence.",
)
@click.option(
    "--tunnel-ping-timeout",
    type=SECONDS,
    envvar="ADIT_EDGE_TUNNEL_PING_TIMEOUT",
    default="1.5s",
    show_default=True,
    help="A PING unanswered this long: route no new requests to that connection.",
)
@click.option(
    "--tunnel-idle-timeout",
    type=SECONDS,
    envvar="ADIT_EDGE_TUNNEL_IDLE_TIMEOUT",
    default="5s",
    show_default=True,
    help="Close a connector connection silent this long (cloudflared's QUIC idle timeout).",
)
@click.option(
    "--tunnel-dial-rate",
    type=click.FloatRange(min=0.1),
    envvar="ADIT_EDGE_TUNNEL_DIAL_RATE",
    default=16.0,
    show_default=True,
    help="New tunnel connections a client address may open per second, after the burst; "
    "more are closed before their TLS handshake.",
)
@click.option(
    "--tunnel-dial-burst",
    type=click.IntRange(min=1),
    envvar="ADIT_EDGE_TUNNEL_DIAL_BURST",
    default=128,
    show_default=True,
    help="New tunnel connections a client address may open at once (a reconnect storm).",
)
@click.option(
    "--management-hostname",
    envvar="ADIT_EDGE_MANAGEMENT_HOSTNAME",
    default="management.argotunnel.com",
    show_default=True,
    help="Public hostname `tail` dials (a token, not a route, picks the tunnel); requests "
    "reach connectors as management.argotunnel.com.",
)
@click.option(
    "--acme-directory",
    envvar="ADIT_EDGE_ACME_DIRECTORY",
    default="https://acme-v02.api.letsencrypt.org/directory",
    show_default=True,
    help="ACME (RFC 8555) directory the HTTPS listener's certificates come from, for every "
    "routed hostname; 'off' serves only the edge CA's (and --certificate-dir's).",
)
@click.option(
    "--acme-email",
    envvar="ADIT_EDGE_ACME_EMAIL",
    default=None,
    help="Contact address of the ACME account (the CA's expiry notices).",
)
@click.option(
    "--acme-eab-kid",
    envvar="ADIT_EDGE_ACME_EAB_KID",
    default=None,
    help="External account binding key id (ZeroSSL and other CAs that want one).",
)
@click.option(
    "--acme-eab-hmac-key",
    "acme_eab_hmac_key_file",
    envvar="ADIT_EDGE_ACME_EAB_HMAC_KEY_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the external account binding's HMAC key (or the key itself in "
    "ADIT_EDGE_ACME_EAB_HMAC_KEY).",
)
@click.option(
    "--acme-ca-bundle",
    envvar="ADIT_EDGE_ACME_CA_BUNDLE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM bundle to trust for the ACME directory's HTTPS (a private ACME server).",
)
@click.option(
    "--acme-challenges",
    envvar="ADIT_EDGE_ACME_CHALLENGES",
    default="tls-alpn-01,http-01",
    show_default=True,
    help="Challenge types to answer, in order of preference (tls-alpn-01 on the HTTPS "
    "listener, http-01 on the HTTP one; the CA must reach them on ports 443 and 80; dns-01 "
    "through the zone's RFC 2136 server, see 'adit edge zone dns'). Wildcard hostnames "
    "always use dns-01.",
)
@click.option(
    "--certificate-dir",
    envvar="ADIT_EDGE_CERTIFICATE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Your own certificates: NAME.crt (chain) beside NAME.key, served for the names in "
    "their SANs before ACME's; reloaded when they change.",
)
@click.option(
    "--metrics",
    "metrics_listen",
    envvar="ADIT_EDGE_METRICS",
    type=LISTEN_ADDRESS,
    default=None,
    help="Serve Prometheus /metrics here (certificate expiry, ACME failures); off by default.",
)
@click.option(
    "--public-name",
    envvar="ADIT_EDGE_PUBLIC_NAME",
    default="",
    help="The edge's public DNS name: the CNAME target of route dns records in zones with a "
    "DNS server (adit edge zone dns). Env: ADIT_EDGE_PUBLIC_NAME.",
)
@click.option(
    "--public-address",
    "public_addresses",
    envvar="ADIT_EDGE_PUBLIC_ADDRESS",
    multiple=True,
    help="A public IP address of the edge: the A/AAAA records of a route at a zone's apex. "
    "Repeatable. Env: ADIT_EDGE_PUBLIC_ADDRESS (space-separated).",
)
@click.option(
    "--public-https-port",
    envvar="ADIT_EDGE_PUBLIC_HTTPS_PORT",
    type=click.IntRange(1, 65535),
    default=None,
    help="The port visitors reach the HTTPS listener on (behind a port forward or load "
    "balancer), used in the Always-HTTPS redirect. Default: the first --https-listen port, "
    "left out of URLs when it is 443. Env: ADIT_EDGE_PUBLIC_HTTPS_PORT.",
)
@click.option("--exit-with-pid", type=int, default=None, hidden=True)
@click.option("--ephemeral", is_flag=True, hidden=True, help="Delete the state dir on exit.")
@click.option(
    "--loglevel",
    envvar="ADIT_EDGE_LOGLEVEL",
    default="info",
    type=click.Choice(["debug", "info", "warn", "error"]),
    show_default=True,
)
@click.option(
    "--log-format",
    "--output",
    "log_format",
    type=click.Choice(["default", "json"]),
    default="default",
    show_default=True,
    help="Console log format.",
)
@click.option("--logfile", default=None, help="Also write JSON log lines to this file.")
@click.option(
    "--header-timeout",
    envvar="ADIT_EDGE_HEADER_TIMEOUT",
    type=_SECONDS,
    default=format_go_duration(_LIMITS.header_timeout),
    show_default=True,
    help="Time a client has to send a request head (answered 408 after).",
)
@click.option(
    "--keepalive-timeout",
    envvar="ADIT_EDGE_KEEPALIVE_TIMEOUT",
    type=_SECONDS,
    default=format_go_duration(_LIMITS.keepalive_timeout),
    show_default=True,
    help="Time a keep-alive connection may idle between requests.",
)
@click.option(
    "--body-timeout",
    envvar="ADIT_EDGE_BODY_TIMEOUT",
    type=_SECONDS,
    default=format_go_duration(_LIMITS.body_timeout),
    show_default=True,
    help="Time a request body may stall, or a client may not read its response.",
)
@click.option(
    "--body-min-rate",
    envvar="ADIT_EDGE_BODY_MIN_RATE",
    type=click.IntRange(min=0),
    default=_LIMITS.body_min_rate,
    show_default=True,
    help="Bytes per second a request body must average (0: only stalls count).",
)
@click.option(
    "--response-timeout",
    envvar="ADIT_EDGE_RESPONSE_TIMEOUT",
    type=_SECONDS,
    default=format_go_duration(_LIMITS.response_timeout),
    show_default=True,
    help="Time the tunnel has to answer, or to go on answering (a 524 page after).",
)
@click.option(
    "--max-connections",
    envvar="ADIT_EDGE_MAX_CONNECTIONS",
    type=click.IntRange(min=1),
    default=_LIMITS.max_connections,
    show_default=True,
    help="Connections each public or API listener takes at most.",
)
@click.option(
    "--max-connections-per-ip",
    envvar="ADIT_EDGE_MAX_CONNECTIONS_PER_IP",
    type=click.IntRange(min=1),
    default=_LIMITS.max_connections_per_ip,
    show_default=True,
    help="Connections one client address may hold on each public or API listener.",
)
@click.option(
    "--private-flows-per-account",
    envvar="ADIT_EDGE_PRIVATE_FLOWS_PER_ACCOUNT",
    type=click.IntRange(min=1),
    default=_FLOWS.max_per_account,
    show_default=True,
    help="Private-network flows (adit access --destination) one account may have open.",
)
@click.option(
    "--private-tcp-idle-timeout",
    envvar="ADIT_EDGE_PRIVATE_TCP_IDLE_TIMEOUT",
    type=_SECONDS,
    default=format_go_duration(_FLOWS.tcp_idle_timeout),
    show_default=True,
    help="Close a private TCP flow that carried no byte for this long.",
)
@click.option(
    "--private-udp-idle-timeout",
    envvar="ADIT_EDGE_PRIVATE_UDP_IDLE_TIMEOUT",
    type=_SECONDS,
    default=format_go_duration(_FLOWS.udp_idle_timeout),
    show_default=True,
    help="Close a private UDP flow that carried no datagram for this long.",
)
@click.option(
    "--grace-period",
    envvar="ADIT_EDGE_GRACE_PERIOD",
    type=_SECONDS,
    default="30s",
    show_default=True,
    help="After SIGTERM, how long in-flight requests may take to finish.",
)
@click.option(
    "--handover-timeout",
    envvar="ADIT_EDGE_HANDOVER_TIMEOUT",
    type=_SECONDS,
    default="60s",
    show_default=True,
    help="After SIGUSR2, how long the new edge process has to be ready before this one "
    "gives up on it and keeps serving.",
)
@click.option(
    "--handover-hold",
    envvar="ADIT_EDGE_HANDOVER_HOLD",
    type=_SECONDS,
    # cloudflared redials a closed connection after its supervisor's backoff: up to 1s plus
    # a random wait of up to 10s (20s when it had to retry lately); adit's connector at once.
    default="30s",
    show_default=True,
    help="Right after a hand-over, how long a visitor's request waits for a connection of a "
    "tunnel whose connectors are still moving to the new process (instead of a 530).",
)
@click.option(
    "--access-log-retention",
    envvar="ADIT_EDGE_ACCESS_LOG_RETENTION",
    type=_SECONDS,
    default="720h",
    show_default=True,
    help="How long Access decisions stay in the access log (30 days by default).",
)
@click.option(
    "--geoip-db",
    envvar="ADIT_EDGE_GEOIP_DB",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A MaxMind country database (GeoLite2-Country.mmdb): Access's country rules read "
    "the visitor's country from it.",
)
@click.option(
    "--trusted-proxies",
    envvar="ADIT_EDGE_TRUSTED_PROXIES",
    default="",
    metavar="CIDR,...",
    help="Proxies in front of the edge whose X-Forwarded-For names the visitor's address "
    "(for Access's country and IP rules); from anyone else the header is ignored.",
)
@click.pass_context
def edge(
    ctx: click.Context,
    state_dir: Path,
    tunnel_listen: tuple[str, ...],
    http_listen: tuple[str, ...],
    https_listen: tuple[str, ...],
    api_listen: tuple[str, ...],
    location: str,
    advertise: tuple[str, ...],
    api_names: tuple[str, ...],
    ready_file: Path | None,
    quick_tunnel_file: Path | None,
    store_timeout: float,
    tunnel_ping_interval: float,
    tunnel_ping_timeout: float,
    tunnel_idle_timeout: float,
    tunnel_dial_rate: float,
    tunnel_dial_burst: int,
    exit_with_pid: int | None,
    ephemeral: bool,
    loglevel: str,
    log_format: str,
    logfile: str | None,
    header_timeout: float,
    keepalive_timeout: float,
    body_timeout: float,
    body_min_rate: int,
    response_timeout: float,
    max_connections: int,
    max_connections_per_ip: int,
    private_flows_per_account: int,
    private_tcp_idle_timeout: float,
    private_udp_idle_timeout: float,
    grace_period: float,
    handover_timeout: float,
    handover_hold: float,
    access_log_retention: float,
    geoip_db: Path | None,
    trusted_proxies: str,
    management_hostname: str,
    acme_directory: str,
    acme_email: str | None,
    acme_eab_kid: str | None,
    acme_eab_hmac_key_file: Path | None,
    acme_ca_bundle: Path | None,
    acme_challenges: str,
    certificate_dir: Path | None,
    metrics_listen: str | None,
    public_name: str,
    public_addresses: tuple[str, ...],
    public_https_port: int | None,
) -> None:
    """Run the self-hosted edge (or administer it with a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    check_state_dir(state_dir)
    from adit.edge.acme_flags import acme_settings, check_certificate_dir

    acme = acme_settings(
        acme_directory,
        acme_email,
        acme_eab_kid,
        acme_eab_hmac_key_file,
        acme_ca_bundle,
        acme_challenges,
    )
    check_certificate_dir(certificate_dir)
    from adit.allocator import keep_read_buffers_on_heap
    from adit.edge.server import EdgeSettings, run_edge
    from adit.edge.tls_gate import DialRates
    from adit.logs import LogSettings, configure_logging

    keep_read_buffers_on_heap()

    configure_logging(LogSettings(level=loglevel, output=log_format, logfile=logfile))
    for noisy in ("hpack", "h2"):  # frame-level debug output would drown the edge's own
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from adit.protocol.hostnames import InvalidHostname, check_hostname

    try:
        management_hostname = check_hostname(management_hostname)
    except InvalidHostname as exc:
        raise click.BadParameter(str(exc), param_hint="--management-hostname") from None
    published = _published(public_name, public_addresses)
    from adit.edge.access.client_address import parse_trusted_proxies

    try:
        proxies = parse_trusted_proxies([trusted_proxies])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if geoip_db is not None:
        from adit.edge.access.geoip import CountryDb, GeoIpError

        try:
            CountryDb(geoip_db).close()
        except GeoIpError as exc:
            raise click.UsageError(str(exc)) from None
    settings = EdgeSettings(
        published=published,
        state_dir=state_dir,
        tunnel_listen=tunnel_listen,
        http_listen=http_listen,
        https_listen=https_listen,
        api_listen=api_listen,
        location=location,
        advertise=advertise,
        api_names=api_names,
        ready_file=ready_file,
        quick_tunnel_file=quick_tunnel_file,
        exit_with_pid=exit_with_pid,
        ephemeral=ephemeral,
        store_timeout=store_timeout,
        limits=Limits(
            header_timeout=header_timeout,
            keepalive_timeout=keepalive_timeout,
            body_timeout=body_timeout,
            body_min_rate=body_min_rate,
            response_timeout=response_timeout,
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
        ),
        grace_period=grace_period,
        handover_timeout=handover_timeout,
        handover_hold=handover_hold,
        access_log_retention=access_log_retention,
        geoip_db=geoip_db,
        trusted_proxies=tuple(str(n) for n in proxies),
        management_hostname=management_hostname,
        acme=acme,
        certificate_dir=certificate_dir,
        metrics_listen=metrics_listen,
        public_https_port=public_https_port,
        tunnel_ping_interval=tunnel_ping_interval,
        tunnel_ping_timeout=tunnel_ping_timeout,
        tunnel_idle_timeout=tunnel_idle_timeout,
        tunnel_dial_rates=DialRates(rate=tunnel_dial_rate, burst=tunnel_dial_burst),
        private_flows=FlowLimits(
            max_per_account=private_flows_per_account,
            tcp_idle_timeout=private_tcp_idle_timeout,
            udp_idle_timeout=private_udp_idle_timeout,
        ),
    )
    try:
        settings.tunnel_liveness  # noqa: B018 - validates the three durations together
    except ValueError as exc:
        raise click.UsageError(f"--tunnel-ping-*/--tunnel-idle-timeout: {exc}") from None
    import uvloop

    try:
        code = uvloop.run(run_edge(settings))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


def _published(name: str, addresses: tuple[str, ...]) -> PublishedEdge:
    """--public-name and --public-address, checked (a usage error names the flag)."""
    import ipaddress

    from adit.edge.route_dns import PublishedEdge
    from adit.protocol.hostnames import InvalidHostname, check_hostname

    if name:
        try:
            name = check_hostname(name)
        except InvalidHostname as exc:
            raise click.BadParameter(str(exc), param_hint="--public-name") from None
    checked = []
    for address in addresses:
        try:
            checked.append(str(ipaddress.ip_address(address.strip("[]"))))
        except ValueError:
            raise click.BadParameter(
                f"{address!r} is not an IP address", param_hint="--public-address"
            ) from None
    return PublishedEdge(name, tuple(checked))


for _command in ADMIN_COMMANDS:
    edge.add_command(_command)
edge.add_command(cert_group)


def main() -> None:
    """``adit-edge`` console script."""
    edge(prog_name="adit-edge")
