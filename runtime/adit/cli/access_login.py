"""``adit access login``, ``token`` and ``curl``: an Access application's token for the
command line, as cloudflared's (CLOUDFLARED_FEATURES.md §1.15).

``login URL`` makes an X25519 key pair, prints the edge's ``/cdn-cgi/access/cli`` URL with
the public key, and polls the edge's one-time transfer (``/cdn-cgi/access/transfer/KEY``)
until the browser, signed in, has allowed the hand-over; the token comes sealed to the key
(:mod:`adit.protocol.token_transfer`). It is stored as cloudflared stores it:
``~/.adit/<app host>-<aud>-token``, 0600, in a 0700 directory. ``token -app URL`` prints the
stored token; ``curl URL ...`` runs curl with it in ``cf-access-token``.

A self-hosted edge whose name is not in DNS or whose certificate its own CA signed is reached
with ``--edge`` and ``--cacert``, as ``adit access tcp`` does.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import click
import httpx

from adit.cli.access import EdgeTarget, resolve_target
from adit.credentials.search_path import default_login_directory
from adit.protocol.token_transfer import TransferError, new_key, open_box, public_key_text

__all__ = ["LOGIN_COMMANDS", "stored_token"]

_POLL_INTERVAL = 1.0
_MISSING = (
    "Unable to find token for provided application. Please run login command to generate token."
)


def _target(url: str, edge: str, cacert: str) -> EdgeTarget:
    if not url:
        raise click.UsageError("Please provide the url of the Access application")
    return resolve_target(url, edge=edge, cacert=cacert)


def _context(target: EdgeTarget) -> ssl.SSLContext:
    if target.ca_pem:
        return ssl.create_default_context(cadata=target.ca_pem)
    return ssl.create_default_context()


def _get(client: httpx.Client, target: EdgeTarget, path: str) -> httpx.Response:
    scheme = "https" if target.tls else "http"
    host = f"[{target.address}]" if ":" in target.address else target.address
    return client.get(
        f"{scheme}://{host}:{target.port}{path}",
        headers={"Host": target.host_header},
        extensions={"sni_hostname": target.server_name} if target.tls else {},
    )


def _claims(token: str) -> dict[str, object]:
    """The token's claims, unverified (the edge handed it over sealed; only for its file name
    and expiry)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _token_dir() -> Path:
    return default_login_directory()


def stored_token(host: str) -> str | None:
    """The newest live token stored for ``host`` (``adit access login``)."""
    directory = _token_dir()
    if not directory.is_dir():
        return None
    found = sorted(directory.glob(f"{host}-*-token"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        token = path.read_text().strip()
        exp = _claims(token).get("exp")
        if isinstance(exp, int | float) and exp > time.time():
            return token
    return None


def _store(host: str, token: str) -> Path:
    aud = _claims(token).get("aud")
    tag = aud[0] if isinstance(aud, list) and aud else str(aud or "app")
    directory = _token_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{host}-{tag}-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    os.chmod(path, 0o600)
    return path


def _host(url: str) -> str:
    raw = url if "://" in url else f"https://{url}"
    return (urlsplit(raw).hostname or "").lower()


_edge_option = click.option(
    "--edge",
    envvar="TUNNEL_SERVICE_EDGE",
    default="",
    metavar="HOST[:PORT]",
    help="A self-hosted edge's public listener to dial instead of the application's hostname.",
)
_cacert_option = click.option(
    "--cacert",
    envvar="TUNNEL_SERVICE_CACERT",
    default="",
    metavar="CA.pem",
    help="Trust this CA (the edge's ca.pem) instead of the system's.",
)


@click.command("login")
@click.argument("url", required=False, default="")
@click.option("--app", "app_flag", default="", hidden=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only the token.")
@click.option("--no-verbose", is_flag=True, help="Print only the token.")
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds to wait for the browser login.",
)
@_edge_option
@_cacert_option
def login(
    url: str,
    app_flag: str,
    quiet: bool,
    no_verbose: bool,
    timeout: float,
    edge: str,
    cacert: str,
) -> None:
    """Log in to an Access application in a browser and store its token."""
    url = url or app_flag
    target = _target(url, edge, cacert)
    key = new_key()
    public = public_key_text(key)
    back = quote(target.path or "/", safe="")
    login_url = (
        f"https://{target.host_header}/cdn-cgi/access/cli?token={public}&redirect_url={back}"
    )
    if not (quiet or no_verbose):
        click.echo(
            "Please open the following URL and log in with your identity provider:\n\n"
            f"{login_url}\n\nLeave adit running to download the token automatically.",
            err=True,
        )
    else:
        click.echo(login_url, err=True)
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=_context(target), timeout=30.0) as client:
        while True:
            try:
                answer = _get(client, target, f"/cdn-cgi/access/transfer/{public}")
            except httpx.HTTPError as exc:
                raise click.ClickException(f"cannot reach {target.host_header}: {exc}") from None
            if answer.status_code == 200:
                break
            if answer.status_code >= 500:
                raise click.ClickException(
                    f"{target.host_header} answered the token transfer with {answer.status_code}"
                )
            if time.monotonic() + _POLL_INTERVAL > deadline:
                raise click.ClickException("Failed to fetch the token: the login timed out")
            time.sleep(_POLL_INTERVAL)
    try:
        token = open_box(key, answer.content)
    except TransferError as exc:
        raise click.ClickException(f"Failed to fetch the token: {exc}") from None
    _store(_host(url), token)
    if quiet or no_verbose or app_flag:
        click.echo(token)
    else:
        click.echo(f"Successfully fetched your token:\n\n{token}\n")


@click.command("token")
@click.argument("url", required=False, default="")
@click.option("--app", "-app", "app_flag", default="", help="The application's URL.")
def token(url: str, app_flag: str) -> None:
    """Print the stored token of an Access application."""
    url = app_flag or url
    if not url:
        raise click.UsageError("Please provide the url of the Access application")
    found = stored_token(_host(url))
    if found is None:
        raise click.ClickException(_MISSING)
    sys.stdout.write(found)


@click.command(
    "curl",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--allow-request", "-ar", is_flag=True, help="Run curl even without a token.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="URL [CURL ARGS]...")
def curl(allow_request: bool, args: tuple[str, ...]) -> None:
    """Run curl with the application's stored token (cf-access-token)."""
    if not args or not args[0].startswith(("http://", "https://")):
        raise click.UsageError("Please provide a valid URL as the first argument to curl.")
    found = stored_token(_host(args[0]))
    if found is None and not allow_request:
        raise click.ClickException(_MISSING)
    program = shutil.which("curl")
    if program is None:
        raise click.ClickException("curl is not installed")
    extra = ["-H", f"cf-access-token: {found}"] if found else []
    done = subprocess.run([program, *args, *extra], check=False)
    sys.exit(done.returncode)


LOGIN_COMMANDS: tuple[click.Command, ...] = (login, token, curl)
