"""``adit tunnel config push|show``: a remotely managed tunnel's configuration.

``push NAME --file config.yml`` reads ``ingress``, ``originRequest`` and ``warp-routing`` from
a cloudflared config.yml (validated here first, with the file's line in any error), and PUTs
them to ``/accounts/{a}/cfd_tunnel/{id}/configurations`` in Cloudflare's JSON form (durations
in seconds). The edge stores it as the tunnel's next version and pushes it to every connected
connector; those that register later get it then. A connector that did not apply it is named
on stderr and the command exits 1 (the configuration stays stored).

``show NAME`` prints the stored version and the configuration as config.yml YAML (durations
as Go strings), so ``show`` output can be edited and pushed back.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import click
import msgspec
import yaml

from adit.cli.apiclient import ApiClient, ApiError
from adit.cli.manage import AccountContext, _account_options, _fail
from adit.cli.state import CommandFailure

__all__ = ["config"]


@click.group("config")
def config() -> None:
    """Remotely managed configuration: stored by the edge, pushed to the tunnel's connectors.

    Connectors started with only their token or credentials serve what is pushed; as with
    cloudflared, a connector with ingress of its own takes the pushed version over it.
    """


def _path(client: ApiClient, tunnel_id: uuid.UUID) -> str:
    return f"/accounts/{client.account_tag}/cfd_tunnel/{tunnel_id}/configurations"


def _envelope(client: ApiClient, op: str, method: str, path: str, body: object) -> dict[str, Any]:
    reply = client._call(method, path, body=body)
    if reply.status != 200:
        raise client._status_error(op, reply)
    envelope = client._envelope(reply)
    if not isinstance(envelope.get("result"), dict):
        raise ApiError("the API response was an unexpected type")
    return envelope


def _remote_json(path: Path) -> dict[str, Any]:
    """The file's remotely manageable part in the API's JSON form; validated."""
    from adit.config.errors import ConfigError, IngressError
    from adit.config.load import load_config
    from adit.config.model import to_json_object

    try:
        loaded = load_config(path)
        if not loaded.config.ingress:
            raise CommandFailure(
                f"{path}: has no ingress rules to push; add an `ingress:` list ending in a "
                "catch-all rule (e.g. `- service: http_status:404`)"
            )
        try:
            loaded.validate_ingress()
        except IngressError as exc:
            raise loaded.locate(exc) from exc
    except ConfigError as exc:
        raise CommandFailure(str(exc)) from exc
    body: dict[str, Any] = {"ingress": [to_json_object(rule) for rule in loaded.config.ingress]}
    if loaded.config.origin_request is not None:
        body["originRequest"] = to_json_object(loaded.config.origin_request)
    if loaded.config.warp_routing is not None:
        body["warp-routing"] = to_json_object(loaded.config.warp_routing)
    return body


@config.command("push")
@click.option(
    "--file",
    "-f",
    "file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The config.yml whose ingress, originRequest and warp-routing to push.",
)
@_account_options
@click.argument("tunnel")
@click.pass_context
def push(
    ctx: click.Context,
    file: Path,
    origincert: str | None,
    api_url: str | None,
    tunnel: str,
) -> None:
    """Store TUNNEL's configuration (from a config.yml) and push it to its connectors."""
    body = {"config": _remote_json(file)}
    account = AccountContext(ctx, origincert, api_url)
    try:
        tunnel_id = account.find_id(tunnel)
        client = account.client()
        envelope = _envelope(
            client, "update tunnel configuration", "PUT", _path(client, tunnel_id), body
        )
    except ApiError as exc:
        raise _fail("", exc) from exc
    result = envelope["result"]
    pushes = result.get("pushes") or []
    applied = sum(1 for p in pushes if p.get("status") == "applied")
    click.echo(
        f"Stored configuration version {result.get('version')} for tunnel {tunnel_id}; "
        f"applied by {applied} of {len(pushes)} connections"
    )
    problems = [p for p in pushes if p.get("status") not in ("applied", "superseded")]
    for p in problems:
        error = f": {p['error']}" if p.get("error") else ""
        click.echo(
            f"connector {p.get('client_id')} connection {p.get('conn_index')} "
            f"({p.get('protocol')}): {p.get('status')}{error}",
            err=True,
        )
    if problems:
        raise CommandFailure(
            f"{len(problems)} connection(s) did not apply version {result.get('version')}; "
            "they keep their previous configuration (`adit tunnel config show` lists them)"
        )


def _as_yaml(config: dict[str, Any]) -> str:
    """The config object as config.yml YAML: durations back to Go strings."""
    from adit.config.duration import Duration
    from adit.config.ingress import decode_remote_config

    def text(value: object) -> object:
        if isinstance(value, Duration):
            return value.text
        raise NotImplementedError(f"cannot encode {type(value).__name__}")

    decoded = decode_remote_config(config)
    shown: dict[str, Any] = {}
    if decoded.ingress is not None:
        shown["ingress"] = msgspec.to_builtins(decoded.ingress, enc_hook=text)
    if decoded.origin_request is not None:
        shown["originRequest"] = msgspec.to_builtins(decoded.origin_request, enc_hook=text)
    if "warp-routing" in config:
        shown["warp-routing"] = config["warp-routing"]
    return yaml.safe_dump(shown, sort_keys=False)


@config.command("show")
@click.option(
    "--output", "-o", default="", help="Render output using given FORMAT: 'json' or 'yaml'."
)
@_account_options
@click.argument("tunnel")
@click.pass_context
def show(
    ctx: click.Context,
    output: str,
    origincert: str | None,
    api_url: str | None,
    tunnel: str,
) -> None:
    """Print TUNNEL's stored configuration: its version, then the config.yml YAML."""
    if output not in ("", "json", "yaml"):
        raise CommandFailure(f"Unknown output format '{output}'; use 'json' or 'yaml'")
    account = AccountContext(ctx, origincert, api_url)
    try:
        tunnel_id = account.find_id(tunnel)
        client = account.client()
        envelope = _envelope(
            client, "get tunnel configuration", "GET", _path(client, tunnel_id), None
        )
    except ApiError as exc:
        raise _fail("", exc) from exc
    result = envelope["result"]
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    if output == "yaml":
        click.echo(yaml.safe_dump(result, sort_keys=False), nl=False)
        return
    stored = result.get("config")
    if not isinstance(stored, dict):
        click.echo(f"# tunnel {tunnel_id} has no remotely managed configuration")
        return
    click.echo(f"# version {result.get('version')}, stored {result.get('created_at')}")
    for p in result.get("pushes") or []:
        error = f": {p['error']}" if p.get("error") else ""
        click.echo(
            f"# connector {p.get('client_id')} connection {p.get('conn_index')} "
            f"({p.get('protocol')}): version {p.get('version')} {p.get('status')}{error}"
        )
    click.echo(_as_yaml(stored), nl=False)
