"""``adit edge`` administration: accounts, zones, API tokens and the CA, on the state dir.

These run on the edge host (they open the store and CA files directly, no API involved) and
are what an operator uses to onboard a user: create an account, give it its zones, mint a
token, hand over the printed ``adit tunnel login`` line. A running edge picks up their
changes by itself (its route watcher), and they never block its requests.
"""

from __future__ import annotations

import asyncio
import datetime
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from adit.edge.ca import EdgeCA
from adit.edge.dns_update import (
    DEFAULT_TSIG_ALGORITHM,
    TSIG_ALGORITHMS,
    DnsClient,
    DnsTarget,
    check_tsig_name,
    parse_server,
    parse_tsig_secret,
)
from adit.edge.errors import DnsUpdateFailed
from adit.edge.flag_checks import check_state_dir
from adit.edge.store import Store, StoreError
from adit.edge.zone_options import MAX_HSTS_AGE, ZoneOptions
from adit.protocol.hostnames import normalize_hostname

__all__ = ["ADMIN_COMMANDS", "DEFAULT_STATE_DIR"]

DEFAULT_STATE_DIR = "/var/lib/adit-edge"


def _usable_state_dir(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    check_state_dir(Path(value))  # one line naming the flag, exit 2; not a traceback
    return value


_state_dir_option = click.option(
    "--state-dir",
    envvar="ADIT_EDGE_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(),
    callback=_usable_state_dir,
    help="Edge state directory (store, CA). Env: ADIT_EDGE_STATE_DIR.",
)


@contextmanager
def _opened(state_dir: str) -> Iterator[Store]:
    """The store, closed afterwards; its refusals are the command's error message."""
    store = Store.open_in(state_dir)
    try:
        yield store
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group("account")
def account_group() -> None:
    """Manage accounts (tenants) of this edge."""


@account_group.command("create")
@click.argument("name")
@_state_dir_option
def account_create(name: str, state_dir: str) -> None:
    """Create an account and print its tag."""
    with _opened(state_dir) as store:
        click.echo(store.create_account(name).tag)


@account_group.command("list")
@_state_dir_option
def account_list(state_dir: str) -> None:
    """List accounts: tag, creation time, name."""
    with _opened(state_dir) as store:
        for account in store.list_accounts():
            click.echo(f"{account.tag} {_when(account.created_at)} {account.name}")


@click.group("zone")
def zone_group() -> None:
    """Give DNS zones to accounts: an account routes only names inside its zones."""


@zone_group.command("add")
@click.option("--account", "account_tag", required=True, help="Account tag the zone is for.")
@click.argument("name")
@_state_dir_option
def zone_add(account_tag: str, name: str, state_dir: str) -> None:
    """Give zone NAME (example.com) to an account: it may route NAME and any name below it.

    A zone belongs to one account and overlaps no other account's zone; single labels,
    public suffixes (co.uk, github.io...) and names under localhost are refused.
    """
    with _opened(state_dir) as store:
        zone, created = store.add_zone(account_tag, name)
    if created:
        click.echo(f"zone {zone.name} added to account {account_tag}")
    else:
        click.echo(f"zone {zone.name} already belongs to account {account_tag}")


@zone_group.command("list")
@click.option("--account", "account_tag", default=None, help="Only this account's zones.")
@_state_dir_option
def zone_list(account_tag: str | None, state_dir: str) -> None:
    """List zones: name, account tag, creation time."""
    with _opened(state_dir) as store:
        for zone in store.zones(account_tag):
            target = store.zone_dns.target(zone.name)
            dns = "" if target is None else f" dns={target.server} key={target.tsig_name}"
            click.echo(f"{zone.name} {zone.account_tag} {_when(zone.created_at)}{dns}")


@zone_group.command("dns")
@click.argument("name")
@click.option(
    "--server",
    default=None,
    help="The zone's primary server for RFC 2136 updates: IP:PORT (port 53 by default).",
)
@click.option("--tsig-name", default=None, help="TSIG key name (default: the key file's).")
@click.option(
    "--tsig-algorithm",
    type=click.Choice(TSIG_ALGORITHMS),
    default=None,
    help=f"TSIG algorithm (default: the key file's, else {DEFAULT_TSIG_ALGORITHM}).",
)
@click.option(
    "--tsig-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File with the TSIG secret: tsig-keygen's key clause, or the base64 secret alone.",
)
@click.option("--clear", is_flag=True, help="Stop updating the zone's DNS server.")
@click.option(
    "--no-check",
    is_flag=True,
    help="Save without asking the server for the zone's SOA with the key first.",
)
@_state_dir_option
def zone_dns(
    name: str,
    server: str | None,
    tsig_name: str | None,
    tsig_algorithm: str | None,
    tsig_secret_file: Path | None,
    clear: bool,
    no_check: bool,
    state_dir: str,
) -> None:
    """Have route dns write zone NAME's records in its DNS server (RFC 2136 with TSIG).

    With a server set, adit tunnel route dns adds a CNAME to the edge's --public-name (A/AAAA
    of its --public-address at the zone's apex) before it stores the route, and deleting the
    route or its tunnel removes the record. The server must allow the key to update the zone
    (BIND: update-policy { grant KEY zonesub ANY; };). The secret is kept in the edge's store
    (mode 0600) and never printed.
    """
    if clear:
        if server or tsig_name or tsig_algorithm or tsig_secret_file:
            raise click.UsageError("--clear takes no other option")
        with _opened(state_dir) as store:
            had = store.zone_dns.clear(name)
        click.echo(f"zone {name}: {'DNS server cleared' if had else 'had no DNS server'}")
        return
    if server is None or tsig_secret_file is None:
        raise click.UsageError("give --server and --tsig-secret-file (or --clear)")
    try:
        host, port = parse_server(server)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--server") from None
    try:
        text = tsig_secret_file.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise click.BadParameter(
            f"cannot read {tsig_secret_file}: {getattr(exc, 'strerror', None) or exc}",
            param_hint="--tsig-secret-file",
        ) from None
    try:
        secret, file_name, file_algorithm = parse_tsig_secret(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"{tsig_secret_file}: {exc}", param_hint="--tsig-secret-file"
        ) from None
    key_name = tsig_name or file_name
    if not key_name:
        raise click.UsageError("give --tsig-name (the key file names no key)")
    try:
        key_name = check_tsig_name(key_name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tsig-name") from None
    algorithm = tsig_algorithm or file_algorithm or DEFAULT_TSIG_ALGORITHM
    if algorithm not in TSIG_ALGORITHMS:
        raise click.BadParameter(
            f"{tsig_secret_file} names algorithm {algorithm}, not one of "
            f"{', '.join(TSIG_ALGORITHMS)}",
            param_hint="--tsig-secret-file",
        )
    target = DnsTarget(host, port, key_name, algorithm, secret)
    with _opened(state_dir) as store:
        if store.zone_dns.zone_holding(name) != normalize_hostname(name):
            raise click.ClickException(f"no zone {normalize_hostname(name)} (adit edge zone add)")
    if not no_check:
        try:
            asyncio.run(DnsClient(target, name).check_zone())
        except DnsUpdateFailed as exc:
            raise click.ClickException(
                f"{exc}; nothing was saved (--no-check saves it anyway)"
            ) from None
    with _opened(state_dir) as store:
        store.zone_dns.set(name, target)
    click.echo(
        f"zone {name}: DNS updates to {target.server} with TSIG key {key_name} ({algorithm})"
    )


@zone_group.command("remove")
@click.argument("name")
@_state_dir_option
def zone_remove(name: str, state_dir: str) -> None:
    """Take zone NAME from its account, with the routes inside it (as a DNS zone's records).

    When the zone has a DNS server (zone dns), the records adit wrote there for those routes
    are removed too; one the server refuses to remove is named, and the zone is gone anyway.
    """
    with _opened(state_dir) as store:
        target = store.zone_dns.target(name)
        written = store.zone_dns.zone_records(name)
        dropped = store.remove_zone(name)
        still = {
            host for tag in {a.tag for a in store.list_accounts()} for host, _ in store.routes(tag)
        }
    click.echo(f"zone {name} removed with {dropped} route{'' if dropped == 1 else 's'}")
    if target is None:
        return
    client = DnsClient(target, name)
    failures = []
    for host, records in written.items():
        if host in still:
            continue
        try:
            asyncio.run(client.remove_route(host, records))
        except DnsUpdateFailed as exc:
            failures.append(f"the DNS record of {host} stays: {exc}")
        client = DnsClient(target, name)  # each removal its own time budget
    if failures:
        raise click.ClickException("; ".join(failures))


@zone_group.command("options")
@click.argument("name")
@click.option(
    "--always-https/--no-always-https",
    default=None,
    help="Answer plain-HTTP requests for names in the zone with a 301 to https (ACME "
    "challenges under /.well-known/acme-challenge/ excepted).",
)
@click.option(
    "--hsts-max-age",
    type=click.IntRange(0, MAX_HSTS_AGE),
    default=None,
    metavar="SECONDS",
    help="Send Strict-Transport-Security: max-age=SECONDS on HTTPS responses (0: none).",
)
@_state_dir_option
def zone_options(
    name: str, always_https: bool | None, hsts_max_age: int | None, state_dir: str
) -> None:
    """Show or set zone NAME's options: Always Use HTTPS and HSTS (options not given keep
    their value; a running edge applies changes by itself)."""
    with _opened(state_dir) as store:
        current = store.zone_options_of(name)
        if always_https is not None or hsts_max_age is not None:
            current = ZoneOptions(
                current.always_https if always_https is None else always_https,
                current.hsts_max_age if hsts_max_age is None else hsts_max_age,
            )
            store.set_zone_options(name, current)
    click.echo(
        f"zone {name}: always-https {'on' if current.always_https else 'off'}, "
        f"hsts-max-age {current.hsts_max_age}"
    )


@click.group("token")
def token_group() -> None:
    """Manage API tokens (one account each)."""


@token_group.command("create")
@click.option("--account", "account_tag", required=True, help="Account tag the token acts for.")
@click.option("--label", default="", help="A note to recognise the token by.")
@click.option(
    "--api-url",
    envvar="ADIT_EDGE_API_URL",
    default="https://EDGE-HOST:PORT",
    help="The management API URL users should log in to (printed in the login line).",
)
@_state_dir_option
def token_create(account_tag: str, label: str, api_url: str, state_dir: str) -> None:
    """Create an API token; it is printed once and only its hash is stored."""
    with _opened(state_dir) as store:
        issued = store.create_api_token(account_tag, label)
    ca = EdgeCA.load_or_create(state_dir)
    click.echo(f"API token {issued.token_id} for account {account_tag} (shown only once):")
    click.echo(issued.token)
    click.echo("")
    click.echo("Log in from the machine that manages tunnels with:")
    login = [
        "adit",
        "tunnel",
        "login",
        "--api-url",
        api_url,
        "--api-token",
        issued.token,
        "--ca-fingerprint",
        ca.fingerprint,
    ]
    click.echo("  " + shlex.join(login))


@token_group.command("revoke")
@click.argument("token_id")
@_state_dir_option
def token_revoke(token_id: str, state_dir: str) -> None:
    """Revoke an API token by its ID (the part after ``adit.``)."""
    with _opened(state_dir) as store:
        revoked = store.revoke_api_token(token_id)
    if not revoked:
        raise click.ClickException(f"no live API token with ID {token_id}")


@click.command("ca")
@click.option("--fingerprint", is_flag=True, help="Print the SHA-256 fingerprint instead.")
@_state_dir_option
def ca_command(fingerprint: bool, state_dir: str) -> None:
    """Print the edge CA certificate (PEM): connectors' ``--cacert``."""
    ca = EdgeCA.load_or_create(state_dir)
    click.echo(ca.fingerprint if fingerprint else ca.cert_pem, nl=fingerprint)


ADMIN_COMMANDS: list[click.Command] = [account_group, zone_group, token_group, ca_command]
