"""``adit edge`` administration: accounts, API tokens and the CA, straight on the state dir.

These run on the edge host (they open the store and CA files directly, no API involved) and
are what an operator uses to onboard a user: create an account, mint a token, hand over the
printed ``adit tunnel login`` line.
"""

from __future__ import annotations

import shlex

import click

from adit.edge.ca import EdgeCA
from adit.edge.store import AccountNotFound, Store

__all__ = ["ADMIN_COMMANDS", "DEFAULT_STATE_DIR"]

DEFAULT_STATE_DIR = "/var/lib/adit-edge"

_state_dir_option = click.option(
    "--state-dir",
    envvar="ADIT_EDGE_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Edge state directory (store, CA). Env: ADIT_EDGE_STATE_DIR.",
)


@click.group("account")
def account_group() -> None:
    """Manage accounts (tenants) of this edge."""


@account_group.command("create")
@click.argument("name")
@_state_dir_option
def account_create(name: str, state_dir: str) -> None:
    """Create an account and print its tag."""
    store = Store.open_in(state_dir)
    try:
        click.echo(store.create_account(name).tag)
    finally:
        store.close()


@account_group.command("list")
@_state_dir_option
def account_list(state_dir: str) -> None:
    """List accounts: tag, creation time, name."""
    store = Store.open_in(state_dir)
    try:
        for account in store.list_accounts():
            created = account.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(f"{account.tag} {created} {account.name}")
    finally:
        store.close()


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
    store = Store.open_in(state_dir)
    try:
        issued = store.create_api_token(account_tag, label)
    except AccountNotFound as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
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
    store = Store.open_in(state_dir)
    try:
        if not store.revoke_api_token(token_id):
            raise click.ClickException(f"no live API token with ID {token_id}")
    finally:
        store.close()


@click.command("ca")
@click.option("--fingerprint", is_flag=True, help="Print the SHA-256 fingerprint instead.")
@_state_dir_option
def ca_command(fingerprint: bool, state_dir: str) -> None:
    """Print the edge CA certificate (PEM): connectors' ``--cacert``."""
    ca = EdgeCA.load_or_create(state_dir)
    click.echo(ca.fingerprint if fingerprint else ca.cert_pem, nl=fingerprint)


ADMIN_COMMANDS: list[click.Command] = [account_group, token_group, ca_command]
