"""``adit access app|policy|idp|service-token|apply|export|logs``: an account's Access setup,
for its operators, through the edge's API (``/accounts/{a}/access/...``).

The account is the one ``adit tunnel login`` stored in cert.pem (as for the tunnel
commands). Rules are given as ``kind:value`` (``email_domain:example.com``, ``geo:DE``,
``ip:10.0.0.0/8``, ``service_token:ID``, ``group:groups=admins``, ``everyone``,
``any_valid_service_token``) or as Cloudflare's JSON objects. Secrets never go on the command
line: an identity provider's configuration comes from a file, a service token's secret is
printed once, when it is created or rotated.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from adit.cli.access_private import load_account
from adit.cli.apiclient import ApiClient, ApiError

__all__ = ["ADMIN_COMMANDS"]

_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _account_options(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option(
        "--api-url", envvar="TUNNEL_API_URL", default=None, hidden=True, help="Management API."
    )(func)
    return click.option(
        "--origincert",
        envvar="TUNNEL_ORIGIN_CERT",
        default=None,
        help="The cert.pem adit tunnel login wrote (default: searched as adit tunnel does).",
    )(func)


def _client(origincert: str | None, api_url: str | None) -> ApiClient:
    return load_account(origincert, api_url).client()


def _call(
    origincert: str | None,
    api_url: str | None,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: object = None,
) -> Any:
    try:
        return _client(origincert, api_url).access(method, path, query=query, body=body)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


def _show(obj: object) -> None:
    click.echo(yaml.safe_dump(obj, sort_keys=False).rstrip())


_SHORT_KEYS = {
    "email": "email",
    "email_domain": "domain",
    "geo": "country_code",
    "ip": "ip",
    "service_token": "token_id",
}


def parse_rule_text(text: str) -> dict[str, Any]:
    """A rule from ``kind:value`` or JSON; :class:`click.BadParameter` when neither."""
    text = text.strip()
    if text.startswith("{"):
        try:
            rule = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"{text!r} is not JSON: {exc}") from None
        if not isinstance(rule, dict):
            raise click.BadParameter(f"{text!r}: a rule is a JSON object")
        return rule
    kind, colon, value = text.partition(":")
    if kind in ("everyone", "any_valid_service_token") and not value:
        return {kind: {}}
    if kind == "group" and colon:
        claim, equals, wanted = value.partition("=")
        if equals and claim and wanted:
            return {"group": {"claim": claim, "value": wanted}}
        raise click.BadParameter("a group rule is group:CLAIM=VALUE (group:groups=admins)")
    key = _SHORT_KEYS.get(kind)
    if key is None or not colon or not value:
        raise click.BadParameter(
            f"{text!r}: write a rule as KIND:VALUE with KIND one of "
            f"{', '.join(_SHORT_KEYS)}, group:CLAIM=VALUE, everyone, any_valid_service_token"
        )
    return {kind: {key: value}}


def _read_document(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path} is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise click.ClickException(f"{path}: the document is a mapping (organization, apps, ...)")
    return doc


# -- applications ------------------------------------------------------------------------------


@click.group("app", context_settings=_SETTINGS)
def app() -> None:
    """Access applications: a hostname (optionally a path) and its session."""


@app.command("list")
@_account_options
def app_list(origincert: str | None, api_url: str | None) -> None:
    """The account's applications."""
    for item in _call(origincert, api_url, "GET", "apps", query={"per_page": "1000"}):
        click.echo(f"{item['id']}  {item['domain']}  {item['name']}  aud={item['aud']}")


@app.command("create")
@click.argument("name")
@click.option("--domain", required=True, help="The hostname (optionally /path) to protect.")
@click.option("--session-duration", default="24h", show_default=True)
@click.option("--idp", "idps", multiple=True, help="An allowed identity provider's ID.")
@_account_options
def app_create(
    name: str,
    domain: str,
    session_duration: str,
    idps: tuple[str, ...],
    origincert: str | None,
    api_url: str | None,
) -> None:
    """Protect DOMAIN with a new application called NAME (its AUD tag is printed)."""
    body = {
        "name": name,
        "domain": domain,
        "session_duration": session_duration,
        "allowed_idps": list(idps),
    }
    _show(_call(origincert, api_url, "POST", "apps", body=body))


@app.command("show")
@click.argument("app_id")
@_account_options
def app_show(app_id: str, origincert: str | None, api_url: str | None) -> None:
    """One application and its policies."""
    shown = _call(origincert, api_url, "GET", f"apps/{app_id}")
    shown["policies"] = _call(origincert, api_url, "GET", f"apps/{app_id}/policies")
    _show(shown)


@app.command("delete")
@click.argument("app_id")
@_account_options
def app_delete(app_id: str, origincert: str | None, api_url: str | None) -> None:
    """Delete an application (and its policies): its hostname is open again."""
    _call(origincert, api_url, "DELETE", f"apps/{app_id}")
    click.echo(f"Deleted application {app_id}")


# -- policies ----------------------------------------------------------------------------------


@click.group("policy", context_settings=_SETTINGS)
def policy() -> None:
    """An application's ordered policies (allow, deny, bypass, non_identity)."""


@policy.command("list")
@click.argument("app_id")
@_account_options
def policy_list(app_id: str, origincert: str | None, api_url: str | None) -> None:
    """APP_ID's policies, in precedence order."""
    _show(_call(origincert, api_url, "GET", f"apps/{app_id}/policies"))


@policy.command("create")
@click.argument("app_id")
@click.option("--name", required=True)
@click.option(
    "--decision",
    type=click.Choice(["allow", "deny", "bypass", "non_identity"]),
    required=True,
    help="non_identity is Service Auth (service tokens, no login).",
)
@click.option("--precedence", type=int, default=None, help="Lower first (default: last).")
@click.option("--include", "include", multiple=True, required=True, help="A rule (OR).")
@click.option("--require", "require", multiple=True, help="A rule (AND).")
@click.option("--exclude", "exclude", multiple=True, help="A rule (NOT any).")
@_account_options
def policy_create(
    app_id: str,
    name: str,
    decision: str,
    precedence: int | None,
    include: tuple[str, ...],
    require: tuple[str, ...],
    exclude: tuple[str, ...],
    origincert: str | None,
    api_url: str | None,
) -> None:
    """Add a policy to APP_ID."""
    body: dict[str, Any] = {
        "name": name,
        "decision": decision,
        "include": [parse_rule_text(r) for r in include],
        "require": [parse_rule_text(r) for r in require],
        "exclude": [parse_rule_text(r) for r in exclude],
    }
    if precedence is not None:
        body["precedence"] = precedence
    _show(_call(origincert, api_url, "POST", f"apps/{app_id}/policies", body=body))


@policy.command("delete")
@click.argument("app_id")
@click.argument("policy_id")
@_account_options
def policy_delete(app_id: str, policy_id: str, origincert: str | None, api_url: str | None) -> None:
    """Delete one of APP_ID's policies."""
    _call(origincert, api_url, "DELETE", f"apps/{app_id}/policies/{policy_id}")
    click.echo(f"Deleted policy {policy_id}")


# -- identity providers ------------------------------------------------------------------------


@click.group("idp", context_settings=_SETTINGS)
def idp() -> None:
    """Identity providers: generic OIDC, one-time PIN by e-mail."""


@idp.command("list")
@_account_options
def idp_list(origincert: str | None, api_url: str | None) -> None:
    """The account's identity providers (secrets shown as *****)."""
    _show(_call(origincert, api_url, "GET", "identity_providers", query={"per_page": "1000"}))


@idp.command("create")
@click.argument("name")
@click.option("--type", "kind", type=click.Choice(["oidc", "onetimepin"]), required=True)
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML/JSON with the provider's config (discovery_url, client_id, client_secret, "
    "scopes, email_claim_name, groups_claim_name; or smtp_host, smtp_port, smtp_starttls, "
    "smtp_username, smtp_password, smtp_from). Keep it 0600: it holds secrets.",
)
@_account_options
def idp_create(
    name: str, kind: str, config_file: str | None, origincert: str | None, api_url: str | None
) -> None:
    """Add an identity provider called NAME."""
    config = _read_document(config_file) if config_file else {}
    body = {"name": name, "type": kind, "config": config}
    _show(_call(origincert, api_url, "POST", "identity_providers", body=body))


@idp.command("delete")
@click.argument("idp_id")
@_account_options
def idp_delete(idp_id: str, origincert: str | None, api_url: str | None) -> None:
    """Delete an identity provider no application allows any more."""
    _call(origincert, api_url, "DELETE", f"identity_providers/{idp_id}")
    click.echo(f"Deleted identity provider {idp_id}")


# -- service tokens ----------------------------------------------------------------------------


@click.group("service-token", context_settings=_SETTINGS)
def service_token() -> None:
    """Service tokens: CF-Access-Client-Id / CF-Access-Client-Secret for machines."""


@service_token.command("list")
@_account_options
def token_list(origincert: str | None, api_url: str | None) -> None:
    """The account's service tokens (never their secrets)."""
    for item in _call(origincert, api_url, "GET", "service_tokens", query={"per_page": "1000"}):
        click.echo(
            f"{item['id']}  {item['name']}  {item['client_id']}  expires {item['expires_at']}"
        )


def _issued(item: dict[str, Any]) -> None:
    click.echo(f"id: {item['id']}")
    click.echo(f"CF-Access-Client-Id: {item['client_id']}")
    click.echo(f"CF-Access-Client-Secret: {item['client_secret']}")
    click.echo(f"expires_at: {item['expires_at']}")
    click.echo("The secret is shown only now: store it where the machine reads it.", err=True)


@service_token.command("create")
@click.argument("name")
@click.option("--duration", default="8760h", show_default=True, help="How long it is valid.")
@_account_options
def token_create(name: str, duration: str, origincert: str | None, api_url: str | None) -> None:
    """A new service token called NAME."""
    body = {"name": name, "duration": duration}
    _issued(_call(origincert, api_url, "POST", "service_tokens", body=body))


@service_token.command("rotate")
@click.argument("token_id")
@_account_options
def token_rotate(token_id: str, origincert: str | None, api_url: str | None) -> None:
    """A new secret for the same client id (the old secret stops working now)."""
    _issued(_call(origincert, api_url, "POST", f"service_tokens/{token_id}/rotate"))


@service_token.command("refresh")
@click.argument("token_id")
@_account_options
def token_refresh(token_id: str, origincert: str | None, api_url: str | None) -> None:
    """Extend the token's expiry by its duration, from now."""
    item = _call(origincert, api_url, "POST", f"service_tokens/{token_id}/refresh")
    click.echo(f"{item['client_id']} expires {item['expires_at']}")


@service_token.command("delete")
@click.argument("token_id")
@_account_options
def token_delete(token_id: str, origincert: str | None, api_url: str | None) -> None:
    """Revoke a service token."""
    _call(origincert, api_url, "DELETE", f"service_tokens/{token_id}")
    click.echo(f"Deleted service token {token_id}")


# -- the whole setup ---------------------------------------------------------------------------


@click.command("apply", context_settings=_SETTINGS)
@click.option("-f", "--file", "path", required=True, help="The YAML document (- for stdin).")
@_account_options
def apply_cmd(path: str, origincert: str | None, api_url: str | None) -> None:
    """Make the account's Access setup what the file says (idempotent)."""
    done = _call(origincert, api_url, "PUT", "apply", body=_read_document(path))
    for change in done["changes"]:
        click.echo(change)
    if not done["changes"]:
        click.echo("No changes: the account's Access setup is as the file says.")
    for token in done["created_service_tokens"]:
        _issued(token)


@click.command("export", context_settings=_SETTINGS)
@_account_options
def export_cmd(origincert: str | None, api_url: str | None) -> None:
    """The account's whole Access setup as YAML (for adit access apply -f)."""
    _show(_call(origincert, api_url, "GET", "export"))


@click.command("logs", context_settings=_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one decision a line.")
@click.option("--since", default=None, help="RFC 3339 time.")
@click.option("--until", default=None, help="RFC 3339 time.")
@click.option("--email", default=None)
@click.option("--app", "app_id", default=None, help="An application's ID.")
@click.option("--action", default=None, help="allow, deny, bypass, service or login.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@_account_options
def logs_cmd(
    as_json: bool,
    since: str | None,
    until: str | None,
    email: str | None,
    app_id: str | None,
    action: str | None,
    limit: int,
    origincert: str | None,
    api_url: str | None,
) -> None:
    """The access log: Access decisions, newest first."""
    query = {"per_page": str(limit)}
    for key, value in (
        ("since", since),
        ("until", until),
        ("email", email),
        ("app", app_id),
        ("action", action),
    ):
        if value:
            query[key] = value
    for entry in _call(origincert, api_url, "GET", "logs/access_requests", query=query):
        if as_json:
            click.echo(json.dumps(entry, separators=(",", ":")))
        else:
            click.echo(
                f"{entry['created_at']}  {entry['action']:<7}  {entry['app_domain']}  "
                f"{entry['user_email'] or '-'}  {entry['ip_address']}  ray {entry['ray_id']}"
            )


ADMIN_COMMANDS = (app, policy, idp, service_token, apply_cmd, export_cmd, logs_cmd)
