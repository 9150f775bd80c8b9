"""``adit tunnel login/create/route dns/list/info/delete/token/cleanup/rotate``: account side.

``route ip`` and ``vnet`` (private networks) live in :mod:`adit.cli.teamnet`.

Behaviour, flags, env vars, output and messages follow cloudflared (CLOUDFLARED_FEATURES.md
§1.2-1.9) with ``adit`` in place of ``cloudflared``. They talk to the management API named in
cert.pem (adit's edge, or Cloudflare's API with a real cert.pem).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import json
import os
import re
import secrets
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from adit.cli.apiclient import ApiClient, ApiError, fetch_unverified_ca
from adit.cli.lazy_group import LazyGroup
from adit.cli.state import CommandFailure, UsageFailure, cli_state
from adit.cli.tunnel_certificates import certificate_lines
from adit.config.duration import parse_go_duration
from adit.config.settings import effective_value
from adit.credentials import (
    CredentialsError,
    InvalidTunnelToken,
    OriginCert,
    TunnelCredentials,
    credentials_to_json,
    decode_tunnel_token,
    default_login_directory,
    find_credentials_file,
    find_default_origin_cert,
    load_credentials_file,
    missing_origin_cert_message,
    read_origin_cert,
    write_credentials_file,
    write_origin_cert,
)
from adit.protocol.hostnames import InvalidHostname, check_hostname

__all__ = ["COMMANDS"]

DEFAULT_API_URL = "https://api.cloudflare.com/client/v4"
_LIST_SORT_FIELDS = "name, id, createdAt, deletedAt, numConnections"
_INFO_SORT_FIELDS = "id, createdAt, numConnections, version"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


# -- output helpers -------------------------------------------------------------------------


def _log(level: str, message: str, **fields: str) -> None:
    """A console log line on stderr in cloudflared's shape (``<UTC time> INF msg key=value``)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    extra = "".join(f" {k}={v}" for k, v in fields.items())
    click.echo(f"{stamp} {level} {message}{extra}", err=True)


def _tabulate(rows: Sequence[Sequence[str]]) -> list[str]:
    """Go's tabwriter (padding 1, every cell tab-terminated): each cell padded, trailing too."""
    widths = [max(len(row[i]) for row in rows) + 1 for i in range(len(rows[0]))]
    return ["".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def _parse_time(text: object) -> datetime.datetime | None:
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _rfc3339(moment: datetime.datetime | None) -> str:
    if moment is None:
        return _GO_ZERO_TIME
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_nano(text: object) -> str:
    """Go's JSON rendering of a time.Time (RFC 3339, fraction without trailing zeros)."""
    moment = _parse_time(text)
    if moment is None:
        return _GO_ZERO_TIME
    utc = moment.astimezone(datetime.UTC)
    out = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        out += f".{utc.microsecond:06d}".rstrip("0")
    return out + "Z"


def _go_default_time(text: object) -> str:
    """Go's ``time.Time.String()`` for a UTC time: ``2026-11-20 09:00:00 +0000 UTC``."""
    moment = _parse_time(text)
    if moment is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    utc = moment.astimezone(datetime.UTC)
    out = utc.strftime("%Y-%m-%d %H:%M:%S")
    if utc.microsecond:
        out += f".{utc.microsecond:06d}".rstrip("0")
    return out + " +0000 UTC"


def _render(output: str, value: Any, yaml_value: Any) -> None:
    if output == "json":
        click.echo(json.dumps(value, indent=2, ensure_ascii=False))
    elif output == "yaml":
        click.echo(yaml.safe_dump(yaml_value, sort_keys=False), nl=False)
    else:
        raise CommandFailure(f"Unknown output format '{output}'")


def _connection_out(conn: dict[str, Any]) -> dict[str, Any]:
    return {
        "colo_name": conn.get("colo_name", ""),
        "id": conn.get("id", ""),
        "is_pending_reconnect": bool(conn.get("is_pending_reconnect")),
        "origin_ip": conn.get("origin_ip") or "",
        "opened_at": _rfc3339_nano(conn.get("opened_at")),
        "protocol": conn.get("protocol") or "http2",
    }


def _tunnel_out(tunnel: dict[str, Any]) -> dict[str, Any]:
    conns = tunnel.get("connections")
    return {
        "id": tunnel.get("id", ""),
        "name": tunnel.get("name", ""),
        "created_at": _rfc3339_nano(tunnel.get("created_at")),
        "deleted_at": _rfc3339_nano(tunnel.get("deleted_at")),
        "connections": None if conns is None else [_connection_out(c) for c in conns],
    }


def _go_yaml(value: Any) -> Any:
    """Go yaml's default field names: the Go field name lower-cased (no underscores)."""
    if isinstance(value, dict):
        return {k.replace("_", "").lower(): _go_yaml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_yaml(v) for v in value]
    return value


def _fmt_connections(
    conns: Sequence[dict[str, Any]], show_recently_disconnected: bool, key: str = "colo_name"
) -> str:
    """``2xlhr, 1xams``: the connections counted by ``key`` (their location, or protocol)."""
    per_colo: dict[str, int] = {}
    for conn in conns:
        if not conn.get("is_pending_reconnect") or show_recently_disconnected:
            colo = str(conn.get(key) or ("http2" if key == "protocol" else ""))
            per_colo[colo] = per_colo.get(colo, 0) + 1
    return ", ".join(f"{per_colo[c]}x{c}" for c in sorted(per_colo))


def valid_hostname(name: str) -> bool:
    """Whether ``name`` can be routed (``*.`` allowed): the edge's own rule, checked before a
    request is made."""
    try:
        check_hostname(name, wildcard=True)
    except InvalidHostname:
        return False
    return True


# -- account context ------------------------------------------------------------------------


class AccountContext:
    """cert.pem and the API client made from it (cloudflared's ``subcommandContext``)."""

    def __init__(self, ctx: click.Context, origincert: str | None, api_url: str | None) -> None:
        self._ctx = ctx
        self._flag_path = origincert or cli_state(ctx).origincert
        self._api_url = api_url
        self._cert: OriginCert | None = None
        self._cert_path: Path | None = None
        self._client: ApiClient | None = None

    def cert_path_hint(self) -> Path | None:
        """The cert.pem path given or found, without reading it (for credential searches)."""
        if self._flag_path:
            return Path(os.path.expanduser(self._flag_path))
        return find_default_origin_cert()

    def credential(self) -> tuple[OriginCert, Path]:
        """Load cert.pem once, failing with cloudflared's messages."""
        if self._cert is not None and self._cert_path is not None:
            return self._cert, self._cert_path
        path = self.cert_path_hint()
        if path is None:
            _log("ERR", missing_origin_cert_message())
            raise ApiError("Error locating origin cert: client didn't specify origincert path")
        if not path.is_file():
            _log(
                "ERR",
                "Cannot find a valid certificate for your origin at the path:\n"
                f"    {path}\nIf the path above is wrong, specify the path with the "
                "-origincert option.\nIf you don't have a certificate for your adit edge, "
                "run the command:\n\tadit tunnel login\n",
            )
            raise ApiError(
                f"Error locating origin cert: cannot find a valid certificate at the path {path}"
            )
        try:
            cert = read_origin_cert(path)
        except CredentialsError as exc:
            raise ApiError(f"Error decoding origin cert: {exc}") from exc
        if not cert.account_id:
            raise ApiError(
                "Origin certificate needs to be refreshed before creating new tunnels.\n"
                f'Delete {path} and run "adit tunnel login" to obtain a new cert.'
            )
        self._cert, self._cert_path = cert, path
        return cert, path

    def client(self) -> ApiClient:
        """The API client for the account in cert.pem."""
        if self._client is None:
            cert, _ = self.credential()
            # --api-url given to the subcommand, else at tunnel or global level, beats cert.pem.
            api_url = (
                self._api_url or cli_state(self._ctx).api_url or cert.api_url or DEFAULT_API_URL
            )
            self._client = ApiClient(
                api_url=api_url,
                api_token=cert.api_token,
                account_tag=cert.account_id,
                zone_id=cert.zone_id,
                ca_pem=cert.edge_ca_pem,
            )
        return self._client

    def tunnels_named(self, name: str) -> list[dict[str, Any]]:
        """Non-deleted tunnels with exactly this name."""
        return self.client().list_tunnels({"is_deleted": "false", "name": name})

    def find_id(self, ref: str, cred_file: str | None = None) -> uuid.UUID:
        """cloudflared's ``findID``: a UUID, else the ID in ``--cred-file``, else by name."""
        try:
            return uuid.UUID(ref)
        except ValueError:
            pass
        if cred_file:
            try:
                found = load_credentials_file(cred_file)
            except CredentialsError:
                pass
            else:
                if found.tunnel_id.int:
                    return found.tunnel_id
        tunnels = self.tunnels_named(ref)
        if tunnels:
            return uuid.UUID(str(tunnels[0]["id"]))
        raise ApiError(f"{ref} is neither the ID nor the name of any of your tunnels")

    def find_ids(self, refs: Sequence[str]) -> list[uuid.UUID]:
        """cloudflared's ``findIDs``: UUIDs first, then each name must match one tunnel."""
        ids: list[uuid.UUID] = []
        names: list[str] = []
        for ref in refs:
            try:
                ids.append(uuid.UUID(ref))
            except ValueError:
                names.append(ref)
        for name in names:
            tunnels = self.tunnels_named(name)
            if len(tunnels) != 1:
                raise ApiError(f"there should only be 1 non-deleted Tunnel named {name}")
            ids.append(uuid.UUID(str(tunnels[0]["id"])))
        return ids


def _fail(prefix: str, exc: Exception) -> CommandFailure:
    return CommandFailure(f"{prefix}: {exc}" if prefix else str(exc))


def _account_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--origincert",
        default=None,
        hidden=True,
        help="Path to cert.pem (overrides adit tunnel --origincert).",
    )(func)
    return click.option(
        "--api-url",
        envvar="TUNNEL_API_URL",
        default=None,
        hidden=True,
        help="Management API base URL (default: the one in cert.pem).",
    )(func)


_output_option = click.option(
    "--output",
    "-o",
    default="",
    help="Render output using given FORMAT: json or yaml.",
)


def _cred_file_of_lineage(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """The subcommand's own ``--cred-file``, else one given before it (``adit tunnel
    --cred-file X token NAME``), else ``$TUNNEL_CRED_FILE``: the innermost command line wins."""
    if ctx.get_parameter_source(str(param.name)) is click.core.ParameterSource.COMMANDLINE:
        return value
    outer = effective_value(ctx.parent, "credentials_file", None) if ctx.parent else None
    return outer or value


_cred_file_option = click.option(
    "--credentials-file",
    "--cred-file",
    "cred_file",
    envvar="TUNNEL_CRED_FILE",
    default=None,
    callback=_cred_file_of_lineage,
    help="Filepath at which to read/write the tunnel credentials",
)


# -- login ----------------------------------------------------------------------------------


@click.command("login")
@click.option("--api-url", required=True, help="The edge's management API URL.")
@click.option(
    "--api-token", envvar="ADIT_API_TOKEN", default=None, help="API token (env ADIT_API_TOKEN)."
)
@click.option(
    "--ca-fingerprint",
    default=None,
    help="SHA-256 fingerprint of the edge CA (sha256:...), as printed by adit edge token create.",
)
def login(api_url: str, api_token: str | None, ca_fingerprint: str | None) -> None:
    """Log in to an adit edge: writes ~/.adit/cert.pem for the tunnel commands."""
    directory = default_login_directory()
    path = directory / "cert.pem"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size > 0:
        _log(
            "ERR",
            f"You have an existing certificate at {path} which login would overwrite.\n"
            "If this is intentional, please move or delete that file then run this command "
            "again.\n",
        )
        # cloudflared's message, but not its exit status 0: nothing was logged in, and a script
        # running login must not go on as if it had been.
        sys.exit(1)
    token = api_token or click.prompt("API token", hide_input=True, err=True)
    ca_pem = ""
    try:
        if ca_fingerprint:
            ca_pem = _pinned_ca(api_url, ca_fingerprint)
        probe = ApiClient(
            api_url=api_url, api_token=token, account_tag="", zone_id="", ca_pem=ca_pem
        )
        info = probe.edge_info()
    except ApiError as exc:
        raise CommandFailure(f"login failed: {exc}") from exc
    account = str(info.get("account_tag", ""))
    cert = OriginCert(
        zone_id=account,
        account_id=account,
        api_token=token,
        endpoint=str(info.get("endpoint", "") or ""),
        api_url=api_url.rstrip("/"),
        edge_ca_pem=ca_pem,
    )
    try:
        write_origin_cert(path, cert)
    except OSError as exc:
        raise CommandFailure(f"error writing cert to {path}: {exc.strerror}") from exc
    _log(
        "INF",
        "You have successfully logged in.\nIf you wish to copy your credentials to a server, "
        f"they have been saved to:\n{path}\n",
    )


def _pinned_ca(api_url: str, fingerprint: str) -> str:
    # The edge CA is only trusted once it matches what the operator handed over out of band.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    pem = fetch_unverified_ca(api_url)
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError as exc:
        raise ApiError("the edge did not return a CA certificate") from exc
    got = cert.fingerprint(hashes.SHA256()).hex()
    want = fingerprint.strip()
    if want.lower().startswith("sha256:"):
        want = want[len("sha256:") :]
    want = want.replace(":", "").replace(" ", "").lower()
    if not secrets.compare_digest(got, want):
        raise ApiError(
            f"the edge CA fingerprint is sha256:{got}, not sha256:{want}; refusing to trust it"
        )
    return pem


# -- create ---------------------------------------------------------------------------------


@click.command("create")
@_output_option
@_cred_file_option
@click.option(
    "--secret",
    "-s",
    envvar="TUNNEL_CREATE_SECRET",
    default=None,
    help="Base64 encoded secret to set for the tunnel (at least 32 bytes decoded).",
)
@_account_options
@click.argument("args", nargs=-1, metavar="NAME")
@click.pass_context
def create(
    ctx: click.Context,
    output: str,
    cred_file: str | None,
    secret: str | None,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Create a new tunnel with given name."""
    if len(args) != 1:
        raise UsageFailure(
            '"adit tunnel create" requires exactly 1 argument, the name of tunnel to create.'
        )
    name = args[0]
    account = AccountContext(ctx, origincert, api_url)
    prefix = "failed to create tunnel"
    try:
        client = account.client()
    except ApiError as exc:
        raise _fail(f"{prefix}: couldn't create client to talk to the adit edge", exc) from exc
    if secret:
        try:
            tunnel_secret = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _fail(f"{prefix}: Couldn't decode tunnel secret from base64", exc) from exc
        if len(tunnel_secret) < 32:
            raise CommandFailure(f"{prefix}: Decoded tunnel secret must be at least 32 bytes long")
    else:
        tunnel_secret = secrets.token_bytes(32)
    try:
        tunnel = client.create_tunnel(name, base64.b64encode(tunnel_secret).decode("ascii"))
    except ApiError as exc:
        raise _fail(f"{prefix}: Create Tunnel API call failed", exc) from exc
    cert, cert_path = account.credential()
    tunnel_id = uuid.UUID(str(tunnel["id"]))
    edge: tuple[str, ...] = ()
    edge_ca = ""
    if isinstance(tunnel.get("token"), str):
        try:
            from_token = decode_tunnel_token(tunnel["token"])
        except InvalidTunnelToken:
            pass
        else:
            edge, edge_ca = from_token.edge, from_token.edge_ca_pem
    creds = TunnelCredentials(
        account_tag=cert.account_id,
        tunnel_secret=tunnel_secret,
        tunnel_id=tunnel_id,
        endpoint=cert.endpoint,
        edge=edge,
        edge_ca_pem=edge_ca,
    )
    used_cert_path = not cred_file
    target = (
        os.path.expanduser(cred_file) if cred_file else str(cert_path.parent / f"{tunnel_id}.json")
    )
    try:
        write_credentials_file(target, creds)
    except CredentialsError as exc:
        lines = [
            f"Your tunnel '{tunnel.get('name')}' was created with ID {tunnel_id}. However, adit "
            f"couldn't write tunnel credentials to {target}.",
            f"The file-writing error is: {exc}",
        ]
        try:
            client.delete_tunnel(tunnel_id, cascade=True)
        except ApiError as delete_exc:
            lines.append(
                "adit tried to delete the tunnel for you, but encountered an error. You should "
                f"use `adit tunnel delete {tunnel_id}` to delete the tunnel yourself, because "
                "the tunnel can't be run without the tunnelfile."
            )
            lines.append(f"The delete tunnel error is: {delete_exc}")
        else:
            lines.append(
                "The tunnel was deleted, because the tunnel can't be run without the "
                "credentials file"
            )
        raise CommandFailure(f"{prefix}: " + "\n".join(lines)) from exc
    if output:
        shown = {**_tunnel_out(tunnel), "token": tunnel.get("token", "")}
        _render(output, shown, _go_yaml(shown))
        return
    chose = (
        " adit chose this file based on where your origin certificate was found."
        if used_cert_path
        else ""
    )
    click.echo(
        f"Tunnel credentials written to {target}.{chose} Keep this file secret. To revoke these "
        "credentials, delete the tunnel."
    )
    click.echo(f"\nCreated tunnel {tunnel.get('name')} with id {tunnel_id}")


# -- route dns ------------------------------------------------------------------------------


@click.group("route", cls=LazyGroup, lazy_commands={"ip": "adit.cli.teamnet:route_ip"})
def route() -> None:
    """Define which traffic is routed from the edge to this tunnel: requests to a DNS
    hostname, or traffic to private IP networks (route ip). route lb is accepted and
    explains adit's balancing over a tunnel's replicas."""


@route.command("dns")
@click.option(
    "--overwrite-dns",
    "-f",
    is_flag=True,
    envvar="TUNNEL_FORCE_PROVISIONING_DNS",
    help="Overwrites existing DNS records with this hostname",
)
@click.option(
    "--delete",
    is_flag=True,
    help="Remove the route (and its DNS record, in a zone whose DNS server the edge updates).",
)
@_account_options
@click.argument("args", nargs=-1, metavar="TUNNEL HOSTNAME")
@click.pass_context
def route_dns(
    ctx: click.Context,
    overwrite_dns: bool,
    delete: bool,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Route a hostname to a tunnel (cloudflared: create a DNS CNAME record)."""
    if len(args) != 2:
        raise UsageFailure(
            'This command expects the format "adit tunnel route dns <tunnel name/id> <hostname>"'
        )
    account = AccountContext(ctx, origincert, api_url)
    try:
        tunnel_id = account.find_id(args[0])
    except ApiError as exc:
        raise _fail("", exc) from exc
    hostname = args[1]
    if not hostname:
        raise UsageFailure("The third argument should be the hostname")
    if not valid_hostname(hostname):
        raise CommandFailure(f"{hostname} is not a valid hostname")
    if delete:
        try:
            gone = account.client().delete_route_dns(tunnel_id, hostname)
        except ApiError as exc:
            raise _fail("", exc) from exc
        _log(
            "INF",
            f"{gone.get('name') or hostname} no longer routes to this tunnel",
            tunnelID=str(tunnel_id),
        )
        return
    try:
        result = account.client().route_dns(tunnel_id, hostname, overwrite_dns)
    except ApiError as exc:
        raise _fail("", exc) from exc
    name = str(result.get("name") or hostname)
    types = result.get("record_types")
    # adit's edge writes A/AAAA records at a zone's apex, where a CNAME cannot be.
    kind = "/".join(types) + " records" if types and "CNAME" not in types else "CNAME"
    summary = {
        "new": f"Added {kind} {name} which will route to this tunnel",
        "updated": f"{name} updated to route to your tunnel",
        "unchanged": f"{name} is already configured to route to your tunnel",
    }.get(str(result.get("cname")), f"%!s(MISSING){name}")
    _log("INF", summary, tunnelID=str(tunnel_id))


# -- route lb -------------------------------------------------------------------------------

#: cloudflared's ``nameRegex`` for a pool name (cmd/cloudflared/tunnel/subcommands.go).
_POOL_NAME = re.compile(r"[_a-zA-Z0-9][-_.a-zA-Z0-9]*")


@route.command("lb")
@click.argument("args", nargs=-1, metavar="TUNNEL HOSTNAME POOL")
def route_lb(args: tuple[str, ...]) -> None:
    """Accepted for cloudflared's scripts; adit has no load balancer objects (exit status 1).

    cloudflared's route lb TUNNEL HOSTNAME POOL makes the tunnel an origin of a Cloudflare
    load-balancer pool. adit's edge balances by itself: every connector of a tunnel, on any
    host, serves that tunnel's hostnames, and requests are spread over all their connections.
    So run the same tunnel (same credentials or token) on several hosts and route the
    hostname with adit tunnel route dns TUNNEL HOSTNAME.

    Exit status: 255 for arguments cloudflared would refuse, otherwise 1 with what to do
    instead, because nothing was routed and a script must not go on as if it had been.
    """
    if len(args) != 3:
        raise UsageFailure(
            'This command expects the format "adit tunnel route lb <tunnel name/id> <hostname> '
            '<load balancer pool>"'
        )
    tunnel, hostname, pool = args
    if not hostname:
        raise UsageFailure("The third argument should be the load balancer name")
    if not valid_hostname(hostname):
        raise CommandFailure(f"{hostname} is not a valid load balancer name")
    if not pool:
        raise UsageFailure("The fourth argument should be the pool name")
    if not _POOL_NAME.fullmatch(pool):
        raise CommandFailure(f"{pool} is not a valid pool name")
    raise CommandFailure(
        f"adit's edge has no load balancers or pools: {hostname} was not routed and pool "
        f"{pool} was not created. Its edge balances each tunnel over all of the tunnel's "
        "connectors: run the same tunnel on several hosts "
        f"(adit tunnel run {tunnel}, or --token) and route the hostname to it with "
        f"`adit tunnel route dns {tunnel} {hostname}`."
    )


# -- list -----------------------------------------------------------------------------------


def _sort_key(field: str) -> Callable[[dict[str, Any]], Any] | None:
    def when(key: str) -> Callable[[dict[str, Any]], Any]:
        def get(t: dict[str, Any]) -> float:
            moment = _parse_time(t.get(key))
            return moment.timestamp() if moment else float("-inf")

        return get

    keys: dict[str, Callable[[dict[str, Any]], Any]] = {
        "name": lambda t: str(t.get("name", "")),
        "id": lambda t: str(t.get("id", "")),
        "createdAt": when("created_at"),
        "deletedAt": when("deleted_at"),
        "numConnections": lambda t: len(t.get("connections") or []),
    }
    return keys.get(field)


@click.command("list")
@_output_option
@click.option("--show-deleted", "-d", is_flag=True, help="Include deleted tunnels in the list")
@click.option("--name", "-n", default="", help="List tunnels with the given NAME")
@click.option(
    "--name-prefix", "--np", default="", help="List tunnels that start with the give NAME prefix"
)
@click.option(
    "--exclude-name-prefix",
    "--enp",
    default="",
    help="List tunnels whose NAME does not start with the given prefix",
)
@click.option(
    "--when",
    "-w",
    default=None,
    help=(
        "List tunnels that are active at the given TIME in RFC3339 format "
        "(ignored, as in cloudflared)"
    ),
)
@click.option("--id", "-i", "tunnel_id", default="", help="List tunnel by ID")
@click.option(
    "--show-recently-disconnected",
    "--rd",
    is_flag=True,
    help="Include connections that have recently disconnected in the list",
)
@click.option(
    "--sort-by",
    envvar="TUNNEL_LIST_SORT_BY",
    default="name",
    help=(
        "Sorts the list of tunnels by the given field. Valid options are "
        "{name, id, createdAt, deletedAt, numConnections}"
    ),
)
@click.option(
    "--invert-sort",
    is_flag=True,
    envvar="TUNNEL_LIST_INVERT_SORT",
    help="Inverts the sort order of the tunnel list.",
)
@click.option("--max-fetch-size", type=int, default=0, hidden=True)
@_account_options
@click.pass_context
def list_command(
    ctx: click.Context,
    output: str,
    show_deleted: bool,
    name: str,
    name_prefix: str,
    exclude_name_prefix: str,
    when: str | None,
    tunnel_id: str,
    show_recently_disconnected: bool,
    sort_by: str,
    invert_sort: bool,
    max_fetch_size: int,
    origincert: str | None,
    api_url: str | None,
) -> None:
    """List existing tunnels."""
    del when  # cloudflared reads a flag named "time" that does not exist (quirk 3)
    query: dict[str, str] = {}
    if not show_deleted:
        query["is_deleted"] = "false"
    if name:
        query["name"] = name
    if name_prefix:
        query["name_prefix"] = name_prefix
    if exclude_name_prefix:
        query["exclude_prefix"] = exclude_name_prefix
    if tunnel_id:
        try:
            query["uuid"] = str(uuid.UUID(tunnel_id))
        except ValueError as exc:
            raise CommandFailure(
                f"{tunnel_id} is not a valid tunnel ID: invalid UUID length: {len(tunnel_id)}"
            ) from exc
    if max_fetch_size > 0:
        query["per_page"] = str(max_fetch_size)
    try:
        tunnels = AccountContext(ctx, origincert, api_url).client().list_tunnels(query)
    except ApiError as exc:
        raise _fail("", exc) from exc
    key = _sort_key(sort_by)
    if key is None:
        _log(
            "ERR",
            f"{sort_by} is not a valid sort field. Valid sort fields are "
            f"{_LIST_SORT_FIELDS}. Defaulting to 'name'.",
        )
        key = _sort_key("name")
    assert key is not None
    tunnels.sort(key=key, reverse=invert_sort)
    if output:
        shown = [_tunnel_out(t) for t in tunnels]
        _render(output, shown, _go_yaml(shown))
        return
    if not tunnels:
        click.echo(
            "No tunnels were found for the given filter flags. You can use 'adit "
            "tunnel create' to create a tunnel."
        )
        return
    click.echo(
        "You can obtain more detailed information for each tunnel with `adit "
        "tunnel info <name/uuid>`"
    )
    rows = [["ID", "NAME", "CREATED", "CONNECTIONS"]]
    for t in tunnels:
        rows.append(
            [
                str(t.get("id", "")),
                str(t.get("name", "")),
                _rfc3339(_parse_time(t.get("created_at"))),
                _fmt_connections(t.get("connections") or [], show_recently_disconnected),
            ]
        )
    for line in _tabulate(rows):
        click.echo(line)


# -- info -----------------------------------------------------------------------------------


@click.command("info")
@_output_option
@click.option(
    "--show-recently-disconnected",
    "--rd",
    is_flag=True,
    help="Include connections that have recently disconnected in the list",
)
@click.option(
    "--sort-by",
    envvar="TUNNEL_INFO_SORT_BY",
    default="createdAt",
    help=(
        "Sorts the list of connections of a tunnel by the given field. Valid "
        "options are {id, startedAt, numConnections, version}"
    ),
)
@click.option(
    "--invert-sort",
    is_flag=True,
    envvar="TUNNEL_INFO_INVERT_SORT",
    help="Inverts the sort order of the tunnel info.",
)
@_account_options
@click.argument("args", nargs=-1, metavar="TUNNEL")
@click.pass_context
def info(
    ctx: click.Context,
    output: str,
    show_recently_disconnected: bool,
    sort_by: str,
    invert_sort: bool,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """List details about the active connectors for a tunnel."""
    if len(args) != 1:
        raise UsageFailure(
            '"adit tunnel info" accepts exactly one argument, the ID or name of '
            "the tunnel to get info about."
        )
    account = AccountContext(ctx, origincert, api_url)
    try:
        tunnel_id = account.find_id(args[0])
    except ApiError as exc:
        raise _fail("error parsing tunnel ID", exc) from exc
    try:
        clients = account.client().list_active_clients(tunnel_id)
    except ApiError as exc:
        raise _fail("", exc) from exc

    def run_at(c: dict[str, Any]) -> float:
        moment = _parse_time(c.get("run_at"))
        return moment.timestamp() if moment else float("-inf")

    keys: dict[str, Callable[[dict[str, Any]], Any]] = {
        "id": lambda c: str(c.get("id", "")),
        "createdAt": run_at,
        "numConnections": lambda c: len(c.get("conns") or []),
        "version": lambda c: str(c.get("version", "")),
    }
    if sort_by not in keys:
        _log(
            "ERR",
            f"{sort_by} is not a valid sort field. Valid sort fields are "
            f"{_INFO_SORT_FIELDS}. Defaulting to 'name'.",
        )
    clients.sort(key=keys.get(sort_by, run_at), reverse=invert_sort)
    try:
        found = account.client().list_tunnels({"uuid": str(tunnel_id)})
    except ApiError as exc:
        raise _fail("", exc) from exc
    if len(found) != 1:
        raise CommandFailure(
            f"Expected to find a single tunnel with uuid {tunnel_id} but found "
            f"{len(found)} tunnels."
        )
    tunnel = found[0]
    if output:
        shown = {
            "id": tunnel.get("id", ""),
            "name": tunnel.get("name", ""),
            "createdAt": _rfc3339_nano(tunnel.get("created_at")),
            "conns": [
                {
                    "id": c.get("id", ""),
                    "features": c.get("features"),
                    "version": c.get("version", ""),
                    "arch": c.get("arch", ""),
                    "run_at": _rfc3339_nano(c.get("run_at")),
                    "conns": [_connection_out(x) for x in c.get("conns") or []],
                }
                for c in clients
            ],
        }
        _render(output, shown, _go_yaml(shown))
        return
    # adit's section on the hostnames' public certificates follows cloudflared's output.
    certificates = certificate_lines(account.client(), tunnel_id)
    if not clients:
        click.echo(f"Your tunnel {tunnel_id} does not have any active connection.")
        _echo_lines(certificates)
        return
    click.echo(f"NAME:     {tunnel.get('name', '')}")
    click.echo(f"ID:       {tunnel.get('id', '')}")
    click.echo(f"CREATED:  {_go_default_time(tunnel.get('created_at'))}")
    click.echo("")
    # cloudflared's columns, then adit's PROTOCOL (last, so that what reads the others by
    # position still finds them).
    rows = [["CONNECTOR ID", "CREATED", "ARCHITECTURE", "VERSION", "ORIGIN IP", "EDGE", "PROTOCOL"]]
    for c in clients:
        conns = c.get("conns") or []
        edge = _fmt_connections(conns, show_recently_disconnected)
        if not edge:
            continue
        protocols = _fmt_connections(conns, show_recently_disconnected, key="protocol")
        rows.append(
            [
                str(c.get("id", "")),
                _rfc3339(_parse_time(c.get("run_at"))),
                str(c.get("arch", "")),
                str(c.get("version", "")),
                str(conns[0].get("origin_ip") or "<nil>"),
                edge,
                protocols,
            ]
        )
    if len(rows) == 1:
        click.echo("This tunnel has no active connectors.")
        _echo_lines(certificates)
        return
    for line in _tabulate(rows):
        click.echo(line)
    _echo_lines(certificates)


def _echo_lines(lines: Sequence[str]) -> None:
    for line in lines:
        click.echo(line)


# -- delete ---------------------------------------------------------------------------------


@click.command("delete")
@_cred_file_option
@click.option(
    "--force",
    "-f",
    is_flag=True,
    envvar="TUNNEL_RUN_FORCE_OVERWRITE",
    help="Deletes a tunnel even if it has active connections (they are closed).",
)
@_account_options
@click.argument("args", nargs=-1, metavar="TUNNEL...")
@click.pass_context
def delete(
    ctx: click.Context,
    cred_file: str | None,
    force: bool,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Delete existing tunnel by UUID or name."""
    if not args:
        raise UsageFailure(
            '"adit tunnel delete" requires at least 1 argument, the ID or name of '
            "the tunnel to delete."
        )
    account = AccountContext(ctx, origincert, api_url)
    try:
        ids = account.find_ids(args)
        client = account.client()
    except ApiError as exc:
        raise _fail("", exc) from exc
    for tunnel_id in ids:
        try:
            tunnel = client.get_tunnel(tunnel_id)
        except ApiError as exc:
            raise _fail(
                f"Can't get tunnel information. Please check tunnel id: {tunnel_id}", exc
            ) from exc
        if _parse_time(tunnel.get("deleted_at")) is not None:
            raise CommandFailure(f"Tunnel {tunnel_id} has already been deleted")
        try:
            client.delete_tunnel(tunnel_id, cascade=force)
        except ApiError as exc:
            raise _fail(f"Error deleting tunnel {tunnel_id}", exc) from exc
        local = (
            Path(os.path.expanduser(cred_file))
            if cred_file
            else find_credentials_file(tunnel_id, account.cert_path_hint())
        )
        if local is not None and local.is_file():
            try:
                local.unlink()
            except OSError as exc:
                _log(
                    "INF",
                    f"Tunnel {tunnel_id} was deleted, but we could not remove its "
                    f"credentials file  {local}: {exc.strerror}. "
                    "Consider deleting this file manually.",
                )


# -- token ----------------------------------------------------------------------------------


@click.command("token")
@_cred_file_option
@_account_options
@click.argument("args", nargs=-1, metavar="TUNNEL")
@click.pass_context
def token(
    ctx: click.Context,
    cred_file: str | None,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Fetch the credentials token for an existing tunnel (by name or UUID) that allows to
    run it."""
    if len(args) != 1:
        raise UsageFailure(
            '"adit tunnel token" requires exactly 1 argument, the name or UUID of '
            "tunnel to fetch the credentials token for."
        )
    account = AccountContext(ctx, origincert, api_url)
    try:
        tunnel_id = account.find_id(args[0], cred_file)
    except ApiError as exc:
        raise _fail("error parsing tunnel ID", exc) from exc
    try:
        encoded = account.client().get_tunnel_token(tunnel_id)
    except ApiError as exc:
        _log("ERR", f"Could not get the Token for the given Tunnel {tunnel_id}", error=str(exc))
        raise _fail("", exc) from exc
    try:
        creds = decode_tunnel_token(encoded)
    except InvalidTunnelToken as exc:
        raise _fail("", exc) from exc
    if cred_file:
        try:
            write_credentials_file(os.path.expanduser(cred_file), creds)
        except CredentialsError as exc:
            raise _fail(
                f"error writing token credentials to JSON file in path {cred_file}", exc
            ) from exc
        return
    click.echo(encoded)


# -- cleanup --------------------------------------------------------------------------------


@click.command("cleanup")
@click.option(
    "--connector-id",
    "-c",
    envvar="TUNNEL_CLEANUP_CONNECTOR",
    default="",
    help="Constraints the cleanup to stop the connections of a single Connector (by its ID).",
)
@_account_options
@click.argument("args", nargs=-1, metavar="TUNNEL...")
@click.pass_context
def cleanup(
    ctx: click.Context,
    connector_id: str,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Cleanup tunnel connections."""
    if not args:
        raise UsageFailure(
            '"adit tunnel cleanup" requires at least 1 argument, the IDs of the '
            "tunnels to cleanup connections."
        )
    account = AccountContext(ctx, origincert, api_url)
    try:
        ids = account.find_ids(args)
    except ApiError as exc:
        raise _fail("", exc) from exc
    client_id: uuid.UUID | None = None
    extra = ""
    if connector_id:
        try:
            client_id = uuid.UUID(connector_id)
        except ValueError as exc:
            detail = (
                f"invalid UUID length: {len(connector_id)}"
                if len(connector_id) not in (32, 36, 38, 45)
                else "invalid UUID format"
            )
            raise CommandFailure(
                f"{connector_id} is not a valid client ID (must be a UUID): {detail}"
            ) from exc
        extra = f" for connector-id {client_id}"
    try:
        client = account.client()
    except ApiError as exc:
        raise _fail("", exc) from exc
    for tunnel_id in ids:
        _log("INF", f"Cleanup connection for tunnel {tunnel_id}{extra}")
        try:
            client.cleanup_connections(tunnel_id, client_id)
        except ApiError as exc:
            _log("ERR", f"Error cleaning up connections for tunnel {tunnel_id}, error :{exc}")


# -- rotate ---------------------------------------------------------------------------------

DEFAULT_ROTATION_DEADLINE = "1h"


def replace_credentials_file(path: Path, creds: TunnelCredentials) -> None:
    """Rewrite a credentials file atomically: a new file with the old one's mode (0400 when it
    had none we can read), fsynced, then renamed over it, so a connector reading it on SIGHUP
    sees the old or the new credentials, never half of them."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o400
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(credentials_to_json(creds))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@click.command("rotate")
@_cred_file_option
@click.option(
    "--deadline",
    default=DEFAULT_ROTATION_DEADLINE,
    show_default=True,
    help="How long the previous secret stays valid if connectors do not all re-register "
    "with the new one earlier (Go duration, e.g. 30m).",
)
@click.option(
    "--finish",
    is_flag=True,
    help="End a rotation now: the previous secret is refused from here on.",
)
@_account_options
@click.argument("args", nargs=-1, metavar="TUNNEL")
@click.pass_context
def rotate(
    ctx: click.Context,
    cred_file: str | None,
    deadline: str,
    finish: bool,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Give a tunnel a new secret and rewrite its credentials file (by name or UUID).

    The edge keeps accepting the previous secret until every connection re-registered with
    the new one, until --deadline, or until adit tunnel rotate --finish. Running connectors
    pick up the rewritten file on SIGHUP. The new token, for connectors run with --token, is
    the last line on stdout.
    """
    if len(args) != 1:
        raise UsageFailure(
            '"adit tunnel rotate" requires exactly 1 argument, the name or UUID of '
            "the tunnel whose secret to rotate."
        )
    try:
        seconds = parse_go_duration(deadline)
    except ValueError as exc:
        raise CommandFailure(f"invalid --deadline: {exc}") from exc
    if seconds < 0:
        raise CommandFailure("invalid --deadline: must not be negative")
    account = AccountContext(ctx, origincert, api_url)
    try:
        tunnel_id = account.find_id(args[0], cred_file)
        client = account.client()
    except ApiError as exc:
        raise _fail("error parsing tunnel ID", exc) from exc
    if finish:
        try:
            finished = client.finish_rotation(tunnel_id)
        except ApiError as exc:
            raise _fail(f"Error finishing the secret rotation of tunnel {tunnel_id}", exc) from exc
        if finished:
            click.echo(
                f"Finished the secret rotation of tunnel {tunnel_id}: the previous "
                "secret is no longer accepted."
            )
        else:
            click.echo(f"Tunnel {tunnel_id} has no secret rotation in progress.")
        return
    local = (
        Path(os.path.expanduser(cred_file))
        if cred_file
        else find_credentials_file(tunnel_id, account.cert_path_hint())
    )
    try:
        result = client.rotate_tunnel_secret(tunnel_id, seconds)
        creds = decode_tunnel_token(str(result.get("token", "")))
    except (ApiError, InvalidTunnelToken) as exc:
        raise _fail(f"Error rotating the secret of tunnel {tunnel_id}", exc) from exc
    expires = _parse_time(result.get("previous_secret_expires_at"))
    name = result.get("name") or args[0]
    click.echo(
        f"Rotated the secret of tunnel {name} with id {tunnel_id}. The previous secret is "
        f"accepted until {_rfc3339(expires)}, or until every connection has registered with "
        "the new one."
    )
    wrote = False
    if local is not None and local.is_file():
        try:
            old = load_credentials_file(local)
            updated = TunnelCredentials(
                account_tag=creds.account_tag or old.account_tag,
                tunnel_secret=creds.tunnel_secret,
                tunnel_id=tunnel_id,
                endpoint=old.endpoint or creds.endpoint,
                edge=old.edge or creds.edge,
                edge_ca_pem=old.edge_ca_pem or creds.edge_ca_pem,
            )
            replace_credentials_file(local, updated)
        except (CredentialsError, OSError) as exc:
            _log("ERR", f"Couldn't rewrite the tunnel credentials file {local}", error=str(exc))
        else:
            wrote = True
            click.echo(
                f"Tunnel credentials written to {local}. Keep this file secret. Send SIGHUP to "
                "running connectors (`adit tunnel run`) to re-register them with the new secret."
            )
    if not wrote:
        _log("INF", "No credentials file for this tunnel here.")
    # Printed whether or not a file was rewritten: a tunnel created here may run elsewhere
    # with --token (stdout is the user's, not a log).
    _log(
        "INF",
        "Connectors run with --token need the new token below (also shown by `adit tunnel token`).",
    )
    click.echo(str(result.get("token", "")))


COMMANDS: list[click.Command] = [
    login,
    create,
    route,
    list_command,
    info,
    delete,
    token,
    cleanup,
    rotate,
]
