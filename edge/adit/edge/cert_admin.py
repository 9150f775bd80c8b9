"""``adit edge cert list|show|renew``: the HTTPS listener's certificates, from the state dir.

Like the other admin commands these read the state directory directly: what the running edge
wrote (``certificates/HOST/``, see :mod:`adit.edge.cert_files`); ``renew`` leaves a request
the edge picks up within a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from adit.edge.admin import DEFAULT_STATE_DIR
from adit.edge.cert_files import CertificateFiles, StoredCertificate
from adit.edge.flag_checks import check_state_dir

__all__ = ["cert_group"]


def _usable_state_dir(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    check_state_dir(Path(value))
    return value


_state_dir_option = click.option(
    "--state-dir",
    envvar="ADIT_EDGE_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(),
    callback=_usable_state_dir,
    help="Edge state directory. Env: ADIT_EDGE_STATE_DIR.",
)


def _describe(files: CertificateFiles, host: str) -> dict[str, object]:
    status = files.status(host)
    try:
        stored: StoredCertificate | None = files.load(host)
        problem = None
    except ValueError as exc:
        stored, problem = None, str(exc)
    out: dict[str, object] = {"hostname": host, **status}
    if stored is not None:
        out.update(
            stored="acme",
            issuer=stored.issuer,
            names=list(stored.names),
            not_before=stored.not_before.isoformat(),
            not_after=stored.not_after.isoformat(),
        )
    if problem:
        out["stored_error"] = problem
    return out


@click.group("cert")
def cert_group() -> None:
    """The public HTTPS listener's certificates (ACME and their status)."""


@cert_group.command("list")
@_state_dir_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def cert_list(state_dir: str, output: str) -> None:
    """Hostname, source, expiry and the last error of each certificate."""
    files = CertificateFiles(Path(state_dir))
    rows = [_describe(files, host) for host in files.hostnames()]
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        source = "acme" if row.get("stored") else str(row.get("source") or "edge-ca")
        expiry = row.get("not_after") or "-"
        error = row.get("last_error_kind")
        line = f"{row['hostname']} {source} {expiry}"
        click.echo(f"{line} failing:{error}" if error else line)


@cert_group.command("show")
@click.argument("hostname")
@_state_dir_option
def cert_show(hostname: str, state_dir: str) -> None:
    """Everything known of HOSTNAME's certificate (JSON)."""
    files = CertificateFiles(Path(state_dir))
    host = hostname.lower().rstrip(".")
    if host not in files.hostnames():
        raise click.ClickException(f"no certificate or order for {host} in {state_dir}")
    click.echo(json.dumps(_describe(files, host), indent=2))


@cert_group.command("renew")
@click.argument("hostname")
@_state_dir_option
def cert_renew(hostname: str, state_dir: str) -> None:
    """Ask the running edge to renew HOSTNAME's certificate now."""
    files = CertificateFiles(Path(state_dir))
    host = hostname.lower().rstrip(".")
    if host not in files.hostnames():
        raise click.ClickException(
            f"no certificate or order for {host} in {state_dir}: is it routed, and is the "
            "edge's ACME on?"
        )
    files.request_renewal(host)
    click.echo(f"renewal of {host} requested: the edge orders it within a few seconds")
