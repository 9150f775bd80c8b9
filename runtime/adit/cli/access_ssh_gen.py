"""``adit access ssh-gen --hostname H``: a short-lived SSH certificate for the logged-in user,
as cloudflared's (sshgen/sshgen.go).

After ``adit access login https://H``, ssh-gen makes a key pair once (Ed25519, where
cloudflared makes ECDSA P-256; both are what OpenSSH reads) and asks the edge to sign its
public key: ``POST https://H/cdn-cgi/access/cert_sign`` with ``{"public_key", "jwt",
"issuer"}`` (cloudflared posts to the token's issuer, the team domain; adit asks the
application's hostname, which a self-hosted edge always serves, dialled with ``--edge`` and
``--cacert`` like ``adit access login``). The files are cloudflared's, in adit's directory:
``~/.adit/H-cf_key`` (private), ``H-cf_key.pub`` and ``H-cf_key-cert.pub`` (the
certificate), each 0600. ``adit access ssh-config --short-lived-cert`` prints the ssh_config
stanza that runs ssh-gen before every connection and offers that key and certificate.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import click
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from adit.cli.access import EdgeTarget, resolve_target
from adit.cli.access_login import stored_token
from adit.credentials.search_path import default_login_directory

__all__ = ["key_path", "ssh_gen"]

_SIGN_PATH = "/cdn-cgi/access/cert_sign"
_KEY_NAME = "cf_key"


def key_path(hostname: str) -> Path:
    """cloudflared's ``GenerateSSHCertFilePathFromURL``: ``<host>-cf_key`` in the login
    directory."""
    return default_login_directory() / f"{hostname}-{_KEY_NAME}"


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _public_key(private: Path) -> str:
    """The key pair's public half: the one made before, else a new pair (as cloudflared
    keeps its key and only renews the certificate)."""
    public = private.with_name(private.name + ".pub")
    if private.is_file() and public.is_file():
        return public.read_text().strip()
    private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    text = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(public, text + b"\n")
    return text.decode("ascii")


def _post(target: EdgeTarget, body: dict[str, str]) -> httpx.Response:
    context = (
        ssl.create_default_context(cadata=target.ca_pem)
        if target.ca_pem
        else ssl.create_default_context()
    )
    scheme = "https" if target.tls else "http"
    host = f"[{target.address}]" if ":" in target.address else target.address
    with httpx.Client(verify=context, timeout=30.0) as client:
        return client.post(
            f"{scheme}://{host}:{target.port}{_SIGN_PATH}",
            content=json.dumps(body).encode(),
            headers={"Host": target.host_header, "Content-Type": "application/json"},
            extensions={"sni_hostname": target.server_name} if target.tls else {},
        )


def _refusal(answer: httpx.Response) -> str:
    try:
        said = answer.json()
        message = str(said.get("message") or "") if isinstance(said, dict) else ""
    except ValueError:
        message = ""
    return f"{answer.status_code}: {message or answer.reason_phrase}"


@click.command("ssh-gen")
@click.option("--hostname", default="", help="specify the hostname of your application.")
@click.option(
    "--edge",
    envvar="TUNNEL_SERVICE_EDGE",
    default="",
    metavar="HOST[:PORT]",
    help="A self-hosted edge's public listener to dial instead of the hostname.",
)
@click.option(
    "--cacert",
    envvar="TUNNEL_SERVICE_CACERT",
    default="",
    metavar="CA.pem",
    help="Trust this CA (the edge's ca.pem) instead of the system's.",
)
@click.pass_context
def ssh_gen(ctx: click.Context, hostname: str, edge: str, cacert: str) -> None:
    """Generates a short lived certificate for given hostname"""
    if not hostname:
        # cloudflared shows the command's help, exit 0, without a hostname.
        click.echo(ctx.get_help())
        ctx.exit(0)
    target = resolve_target(hostname, edge=edge, cacert=cacert)
    raw = hostname if "://" in hostname else f"https://{hostname}"
    host = (urlsplit(raw).hostname or hostname).lower()
    token = stored_token(host)
    if token is None:
        raise click.ClickException(
            f"no login for {host}: run `adit access login https://{host}` first, then ssh-gen again"
        )
    private = key_path(host)
    public = _public_key(private)
    try:
        answer = _post(target, {"public_key": public, "jwt": token, "issuer": ""})
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {target.host_header}: {exc}") from None
    if answer.status_code != 200:
        hint = f"; run `adit access login https://{host}`" if answer.status_code == 401 else ""
        raise click.ClickException(f"{host} signed no certificate ({_refusal(answer)}){hint}")
    try:
        certificate = str(answer.json()["certificate"])
    except (ValueError, KeyError, TypeError):
        raise click.ClickException(f"{host} answered cert_sign with no certificate") from None
    _write(private.with_name(private.name + "-cert.pub"), certificate.strip().encode() + b"\n")
