"""``adit tunnel ingress validate|rule``: check ingress rules the way cloudflared does.

Output and exit codes follow cloudflared: results on stdout, errors on stderr with exit 1,
``Validation failed: <reason>`` for invalid rules, the "unused keys" warning in place of
``OK`` (still exit 0). The config file is ``--config`` of the subcommand, else
``adit tunnel --config`` (or ``$TUNNEL_CONFIG``), else the first one on the search path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import click

from adit.cli.state import CommandFailure, cli_state
from adit.config.errors import ConfigError, IngressError
from adit.config.ingress import (
    URL_WITH_INGRESS_MESSAGE,
    Ingress,
    decode_remote_config,
    parse_ingress,
)
from adit.config.load import LoadedConfig, find_config_path, load_config
from adit.config.origin import Rule
from adit.config.rule_keys import UnknownRuleKey
from adit.config.services import parse_go_url
from adit.config.validation import validate_file

__all__ = ["ingress"]

NO_CONFIG_MESSAGE = (
    "No configuration file was found. Please create one, or use the --config flag to specify "
    "its filepath. You can use the help command to learn more about configuration files"
)
UNUSED_KEYS_HEADER = (
    "Warning: unused keys detected in your config file. Here is a list of unused keys:"
)

_config_option = click.option(
    "--config",
    "config_path",
    default=None,
    help="Path to a config.yml (default: adit tunnel --config, then the search path).",
)


# Listed under tunnel (cloudflared hides it, but it is how an adit user checks a config).
@click.group("ingress", invoke_without_command=True)
@click.pass_context
def ingress(ctx: click.Context) -> None:
    """Validate and test the tunnel's ingress configuration.

    Rules under the ingress key of config.yml route each request by hostname and path; the
    last rule must match everything. Multiple-origin routing is incompatible with --url.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _config_path(ctx: click.Context, explicit: str | None) -> Path | None:
    return find_config_path(explicit or cli_state(ctx).config_path)


def _load(path: Path) -> LoadedConfig | None:
    """The loaded file, or ``None`` when it is empty (which counts as no config)."""
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        raise CommandFailure(str(exc)) from None
    if loaded.empty:
        click.echo(f"Configuration file {path} was empty", err=True)
        return None
    return loaded


def _url_is_set(ctx: click.Context, loaded: LoadedConfig | None) -> bool:
    state = cli_state(ctx)
    return bool(
        os.environ.get("TUNNEL_URL")
        or state.extra.get("url")
        or (loaded is not None and loaded.config.url)
    )


def _validate_json(ctx: click.Context, text: str) -> None:
    click.echo("Validating rules from cmdline flag --json")
    try:
        config = decode_remote_config(json.loads(text))
    except json.JSONDecodeError as exc:
        raise CommandFailure(f"invalid JSON: {exc}") from None
    except IngressError as exc:
        raise CommandFailure(str(exc)) from None
    try:
        parse_ingress(config.ingress or [], config.origin_request)
    except IngressError as exc:
        raise CommandFailure(f"Validation failed: {exc}") from None
    if _url_is_set(ctx, None):
        raise CommandFailure(URL_WITH_INGRESS_MESSAGE)
    click.echo("OK")


@ingress.command("validate")
@_config_option
@click.option(
    "--json",
    "-j",
    "json_text",
    envvar="TUNNEL_INGRESS_VALIDATE_JSON",
    default=None,
    help="Validate this JSON (durations in seconds) instead of the config file.",
)
@click.pass_context
def validate(ctx: click.Context, config_path: str | None, json_text: str | None) -> None:
    """Validate the ingress configuration."""
    if json_text is not None:
        _validate_json(ctx, json_text)
        return
    path = _config_path(ctx, config_path)
    loaded = None if path is None else _load(path)
    if path is None or loaded is None:
        raise CommandFailure(NO_CONFIG_MESSAGE)
    click.echo(f"Validating rules from {path}")
    try:
        # The check `adit tunnel run` makes at start and on every reload.
        validate_file(loaded, single_origin=False)
    except UnknownRuleKey as exc:
        # adit's own error, not cloudflared's: it names the file, the line and the fix.
        raise CommandFailure(f"Validation failed: {loaded.locate(exc)}") from None
    except IngressError as exc:
        raise CommandFailure(f"Validation failed: {exc}") from None
    if _url_is_set(ctx, loaded):
        raise CommandFailure(URL_WITH_INGRESS_MESSAGE)
    if loaded.warnings:
        click.echo(UNUSED_KEYS_HEADER)
        click.echo(loaded.warnings_text())
        return
    click.echo("OK")


def describe_rule(rule: Rule) -> str:
    """The rule as tab-indented ``hostname:``/``path:``/``service:`` lines (cloudflared's)."""
    lines = []
    if rule.hostname:
        lines.append(f"\thostname: {rule.hostname}")
    if rule.path is not None:
        lines.append(f"\tpath: {rule.path.pattern}")
    lines.append(f"\tservice: {rule.service.url}")
    return "\n".join(lines)


@ingress.command("rule")
@_config_option
@click.argument("url", nargs=-1)
@click.pass_context
def rule(ctx: click.Context, config_path: str | None, url: tuple[str, ...]) -> None:
    """Check which ingress rule matches a given request URL."""
    request = url[0] if url else ""
    if not request:
        raise CommandFailure("adit tunnel rule expects a single argument, the URL to test")
    try:
        parsed = parse_go_url(request)
    except ValueError:
        raise CommandFailure(f"{request} is not a valid URL") from None
    if not parsed.hostname and not parsed.scheme:
        raise CommandFailure(f"{request} doesn't have a hostname, consider adding a scheme")
    path = _config_path(ctx, config_path)
    loaded = None if path is None else _load(path)
    click.echo(f"Using rules from {path if loaded is not None else ''}")
    rules = loaded.config.ingress if loaded is not None else None
    defaults = loaded.config.origin_request if loaded is not None else None
    try:
        found: Ingress = parse_ingress(rules or [], defaults)
    except IngressError as exc:
        raise CommandFailure(f"Validation failed: {exc}") from None
    matched = found.find_matching_rule(parsed.hostname, unquote(parsed.path))
    click.echo(f"Matched rule #{matched.index}")
    click.echo(describe_rule(matched))
