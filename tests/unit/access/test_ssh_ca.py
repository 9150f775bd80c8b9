"""The short-lived SSH certificate CA of an application (a real in-memory store) and the
certificates it signs, read back with ``cryptography``'s own OpenSSH parser."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

from adit.edge.access import setup
from adit.edge.access.ssh_ca import (
    CERT_LIFETIME,
    InvalidPublicKey,
    SshCas,
    principal_of,
    sign_user_key,
)
from adit.edge.access.store import AccessNotFound
from adit.edge.store import Store

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def store() -> Iterator[Store]:
    opened = Store(":memory:")
    yield opened
    opened.close()


UserKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _openssh(key: UserKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def test_a_ca_per_application_made_once_answered_without_its_private_key(store: Store) -> None:
    account = store.create_account("acme").tag
    other = store.create_account("evil").tag
    store.add_zone(account, "example.test")
    app = store.access.create_app(account, {"name": "ssh", "domain": "ssh.example.test"})
    cas = SshCas(store.access)
    with pytest.raises(AccessNotFound, match="no short-lived certificate CA"):
        cas.get(account, app.id)
    made = cas.create(account, app.id)
    assert made.json() == {"id": made.id, "aud": app.aud, "public_key": made.public_key}
    assert made.public_key.startswith("ssh-ed25519 ")
    assert cas.create(account, app.id) == made  # asking again: the same CA
    assert [c.id for c in cas.list(account)] == [made.id]
    # Another account can neither see nor make it.
    with pytest.raises(AccessNotFound):
        cas.get(other, app.id)
    with pytest.raises(AccessNotFound):
        cas.create(other, app.id)
    assert cas.list(other) == []
    # The application's end is its CA's.
    store.access.delete_app(account, app.id)
    assert cas.list(account) == []


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_a_certificate_for_the_emails_principal_valid_for_minutes(kind: str) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    user: UserKey
    if kind == "ed25519":
        user = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        user = ec.generate_private_key(ec.SECP256R1())
    else:
        user = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signed = sign_user_key(ca, _openssh(user), email="alice@example.com", now=NOW)
    cert = load_ssh_public_identity(signed.text.encode())
    assert isinstance(cert, SSHCertificate)
    cert.verify_cert_signature()
    assert cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ) == ca.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert cert.type == SSHCertificateType.USER
    assert cert.valid_principals == [b"alice"]
    assert cert.key_id == b"alice@example.com"
    assert cert.valid_before == int((NOW + CERT_LIFETIME).timestamp())
    assert cert.valid_after < int(NOW.timestamp()) < cert.valid_before
    assert b"permit-pty" in cert.extensions
    assert signed.json()["certificate"] == signed.text
    assert signed.json()["expires_at"] == "2026-12-07T12:03:00Z"


def test_keys_that_cannot_be_certified_are_refused() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidPublicKey, match="2048 bits"):
        sign_user_key(ca, _openssh(weak), email="a@example.com", now=NOW)
    with pytest.raises(InvalidPublicKey, match="not an OpenSSH public key"):
        sign_user_key(ca, "ssh-ed25519 garbage", email="a@example.com", now=NOW)
    assert principal_of("bob.smith@example.com") == "bob.smith"


def test_apply_gives_an_application_its_ca_once_and_export_says_so(store: Store) -> None:
    account = store.create_account("acme").tag
    store.add_zone(account, "example.test")
    doc = {"apps": [{"name": "ssh", "domain": "ssh.example.test", "ssh_ca": True}]}
    first = setup.apply(store.access, account, doc)
    assert first["changes"] == [
        "application ssh.example.test created",
        "SSH CA of ssh.example.test created",
    ]
    (ca,) = SshCas(store.access).list(account)
    assert setup.apply(store.access, account, doc)["changes"] == []
    assert SshCas(store.access).list(account) == [ca]
    (app,) = setup.export(store.access, account)["apps"]
    assert app["ssh_ca"] is True
    # Left out of the document, the CA stays (only DELETE .../ca removes one).
    setup.apply(store.access, account, {"apps": [{"name": "ssh", "domain": "ssh.example.test"}]})
    assert SshCas(store.access).list(account) == [ca]
