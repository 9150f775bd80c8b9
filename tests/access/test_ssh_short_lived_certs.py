"""Issue 18: short-lived SSH certificates, as Cloudflare's. The edge holds an SSH CA for the
application (made through the API), a real OpenSSH server trusts it (``TrustedUserCAKeys``,
no authorized key at all), and after ``adit access login`` (a one-time PIN over a real SMTP
server, in headless Chromium) ``ssh`` with the stanza of ``adit access ssh-config
--short-lived-cert`` runs ``adit access ssh-gen`` and logs in as the e-mail's principal.

Refused: ssh-gen without a login (naming the command to run), a forged session token, and at
sshd a certificate for another principal, an expired one (both signed by the application's
real CA, read from the edge's store as only a thief could) and one of another CA.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    load_ssh_public_identity,
)
from playwright.sync_api import Browser

from access_support.browser import new_context
from access_support.cli_login import login_url
from access_support.smtp import Mailbox, smtp_server
from adversary import access_api as api
from harness import (
    Account,
    Edge,
    Processes,
    adit_command,
    create_tunnel,
    login,
    start_connector,
    start_edge,
    write_config,
)
from sshd import Sshd

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]

HOST = "ssh.example.test"
USER = "alice@example.com"


@dataclass
class Site:
    edge: Edge
    account: Account
    sshd: Sshd
    mailbox: Mailbox
    app: dict[str, Any]
    ca_public_key: str
    port: int

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"


@pytest.fixture
def site(processes: Processes, tmp_path: Path) -> Iterator[Site]:
    edge = start_edge(processes, https=True)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "ssh", HOST)
    with smtp_server() as mailbox:
        api(
            account,
            "POST",
            "identity_providers",
            {
                "name": "One-time PIN",
                "type": "onetimepin",
                "config": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": mailbox.port,
                    "smtp_starttls": False,
                    "smtp_from": "access@example.test",
                },
            },
        )
        app = api(account, "POST", "apps", {"name": "Build hosts", "domain": HOST})
        api(
            account,
            "POST",
            f"apps/{app['id']}/policies",
            {
                "name": "example.com staff",
                "decision": "allow",
                "include": [{"email_domain": {"domain": "example.com"}}],
            },
        )
        ca = api(account, "POST", f"apps/{app['id']}/ca")
        # The server trusts the CA, maps the principal "alice" to this machine's user, and
        # has no authorized key.
        trust = tmp_path / "trusted-ca.pub"
        trust.write_text(ca["public_key"] + "\n")
        principals = tmp_path / "principals"
        principals.write_text("alice\n")
        sshd = Sshd(
            tmp_path,
            processes,
            log_level="VERBOSE",
            extra_config=(
                f"TrustedUserCAKeys {trust}",
                f"AuthorizedPrincipalsFile {principals}",
            ),
        )
        (sshd.dir / "authorized_keys").write_text("")
        config = write_config(
            tmp_path / "config.yml", HOST, [{"service": f"ssh://127.0.0.1:{sshd.port}"}]
        )
        start_connector(processes, tunnel, config)
        port = int(edge.https.rsplit(":", 1)[1])
        yield Site(edge, account, sshd, mailbox, app, ca["public_key"], port)


def _env(site: Site, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(home),
        "TUNNEL_SERVICE_EDGE": site.edge.https,
        "TUNNEL_SERVICE_CACERT": str(site.edge.ca),
    }


def _pin(mailbox: Mailbox, address: str) -> str:
    deadline = time.monotonic() + 15
    while not mailbox.to(address):
        assert time.monotonic() < deadline, f"no mail to {address}"
        mailbox.wait_for(len(mailbox.messages) + 1, timeout=max(0.1, deadline - time.monotonic()))
    body = mailbox.to(address)[-1].get_body(("plain",))
    assert body is not None
    found = re.search(r"\b(\d{6})\b", str(body.get_content()))
    assert found is not None
    return found.group(1)


def _cli_login(site: Site, chromium: Browser, env: dict[str, str]) -> None:
    """``adit access login`` with alice signing in by a mailed PIN and allowing the CLI."""
    proc = subprocess.Popen(
        [*adit_command(), "access", "login", site.url("/"), "--timeout", "90"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        cli_url = login_url(proc)
        context = new_context(chromium, ignore_https_errors=True)  # the edge's own CA
        try:
            page = context.new_page()
            page.goto(cli_url)
            page.fill("input[name=email]", USER)
            page.click("text=Send me a code")
            page.wait_for_selector("input[name=pin]")
            page.fill("input[name=pin]", _pin(site.mailbox, USER))
            page.click("button[type=submit]")
            page.wait_for_selector("text=Allow the command line")
            page.click("text=Allow the command line")
            page.wait_for_selector("text=The command line now has your token")
        finally:
            context.close()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


def _client_options() -> list[str]:
    return [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "LogLevel=ERROR",
    ]


def _ssh(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", *_client_options(), *args, f"root@{HOST}", "echo through-a-certificate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )


def _connections(site: Site) -> int:
    return site.sshd.proc.text().count("Accepted publickey for root")


def _ca_key(site: Site) -> ed25519.Ed25519PrivateKey:
    """The application's CA key, read from the edge's store (a thief's view)."""
    with sqlite3.connect(site.edge.state_dir / "adit-edge.sqlite3") as db:
        (pem,) = db.execute(
            "SELECT private_key FROM access_ssh_cas WHERE app_id = ?", (site.app["id"],)
        ).fetchone()
    key = serialization.load_ssh_private_key(bytes(pem), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def _forged(
    signer: ed25519.Ed25519PrivateKey,
    user_key: ed25519.Ed25519PrivateKey,
    principal: str,
    after: datetime.datetime,
    before: datetime.datetime,
) -> bytes:
    cert = (
        SSHCertificateBuilder()
        .public_key(user_key.public_key())
        .serial(7)
        .type(SSHCertificateType.USER)
        .key_id(b"forged")
        .valid_principals([principal.encode()])
        .valid_after(int(after.timestamp()))
        .valid_before(int(before.timestamp()))
        .sign(signer)
    )
    return cert.public_bytes() + b"\n"


def test_login_ssh_gen_and_ssh_with_a_short_lived_certificate(
    site: Site, chromium: Browser, tmp_path: Path
) -> None:
    # The CA's public key is Cloudflare's answer; its private key is never shown.
    shown = api(site.account, "GET", f"apps/{site.app['id']}/ca")
    assert shown == {"id": shown["id"], "aud": site.app["aud"], "public_key": site.ca_public_key}
    assert [c["id"] for c in api(site.account, "GET", "apps/ca")] == [shown["id"]]
    assert (site.edge.state_dir / "adit-edge.sqlite3").stat().st_mode & 0o777 == 0o600

    # Without a login: ssh-gen says what to run, and makes nothing.
    nobody = _env(site, tmp_path / "nobody")
    refused = subprocess.run(
        [*adit_command(), "access", "ssh-gen", "--hostname", HOST],
        capture_output=True,
        text=True,
        env=nobody,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert f"run `adit access login https://{HOST}` first" in refused.stderr

    home = tmp_path / "cli-home"
    env = _env(site, home)
    _cli_login(site, chromium, env)

    # The stanza ssh-config prints, used as it is but for "~": ssh takes the home directory
    # from the password database, not from $HOME.
    stanza = subprocess.run(
        [*adit_command(), "access", "ssh-config", "--hostname", HOST, "--short-lived-cert"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    body = stanza.split(".ssh/config:\n", 1)[1]
    assert body.startswith(f"Match host {HOST} exec ")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(body.replace("~/", f"{home}/"))
    before = _connections(site)
    done = _ssh(["-F", str(ssh_config)], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["through-a-certificate"]
    assert _connections(site) == before + 1

    # ssh-gen's files, as cloudflared names them, 0600; the certificate is the edge CA's,
    # for alice, for three minutes (after a minute's allowance for clock skew).
    key = home / ".adit" / f"{HOST}-cf_key"
    cert_file = home / ".adit" / f"{HOST}-cf_key-cert.pub"
    for path in (key, key.with_name(key.name + ".pub"), cert_file):
        assert path.stat().st_mode & 0o777 == 0o600, path
    cert = load_ssh_public_identity(cert_file.read_bytes())
    assert isinstance(cert, SSHCertificate)
    assert cert.valid_principals == [b"alice"]
    assert cert.key_id == USER.encode()
    assert cert.valid_before - cert.valid_after == 240
    ca_public = load_ssh_public_identity(site.ca_public_key.encode())
    assert isinstance(ca_public, ed25519.Ed25519PublicKey)
    openssh = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert cert.signature_key().public_bytes(*openssh) == ca_public.public_bytes(*openssh)

    # A forged session token (the stored one with another signature): no certificate.
    (stored,) = (home / ".adit").glob(f"{HOST}-*-token")
    real = stored.read_text()
    head, payload, _ = real.split(".")
    stored.write_text(f"{head}.{payload}.{'A' * 342}")
    forged = subprocess.run(
        [*adit_command(), "access", "ssh-gen", "--hostname", HOST],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert forged.returncode == 1
    assert "signed no certificate (401:" in forged.stderr, forged.stderr
    stored.write_text(real)

    # At sshd: another principal, an expired certificate, another CA: each refused.
    user_key = ed25519.Ed25519PrivateKey.generate()
    identity = tmp_path / "forged_key"
    identity.write_bytes(
        user_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    identity.chmod(0o600)
    now = datetime.datetime.now(datetime.UTC)
    minute = datetime.timedelta(minutes=1)
    real_ca = _ca_key(site)
    cases = {
        "another principal": _forged(real_ca, user_key, "bob", now - minute, now + 3 * minute),
        "expired": _forged(real_ca, user_key, "alice", now - 10 * minute, now - 5 * minute),
        "another CA": _forged(
            ed25519.Ed25519PrivateKey.generate(), user_key, "alice", now - minute, now + minute
        ),
    }
    proxy = shlex.join([*adit_command(), "access", "ssh", "--hostname", "%h"])
    for name, certificate in cases.items():
        forged_cert = tmp_path / "forged_key-cert.pub"
        forged_cert.write_bytes(certificate)
        before = _connections(site)
        result = _ssh(
            [
                "-F",
                "/dev/null",
                "-i",
                str(identity),
                "-o",
                f"CertificateFile={forged_cert}",
                "-o",
                f"ProxyCommand={proxy}",
            ],
            env,
        )
        assert result.returncode == 255, (name, result.stdout, result.stderr)
        assert "Permission denied" in result.stderr, (name, result.stderr)
        assert _connections(site) == before, name
    # The real CA's certificate for alice with that same key is accepted: the refusals
    # above were the principal, the time and the CA, nothing else.
    forged_cert.write_bytes(_forged(real_ca, user_key, "alice", now - minute, now + minute))
    result = _ssh(
        [
            "-F",
            "/dev/null",
            "-i",
            str(identity),
            "-o",
            f"CertificateFile={forged_cert}",
            "-o",
            f"ProxyCommand={proxy}",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
