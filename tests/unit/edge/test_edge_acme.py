"""The ACME pieces that need no CA: ClientHello peeking for TLS-ALPN-01, HTTP-01 answers,
the renewal schedule and bring-your-own certificates."""

from __future__ import annotations

import datetime
import random
import ssl
from pathlib import Path

import pytest

from adit.edge.acme_challenges import (
    ACME_TLS_ALPN,
    CHALLENGE_PATH,
    Http01Solver,
    TlsAlpn01Solver,
    challenge_certificate,
)
from adit.edge.ca import EdgeCA
from adit.edge.cert_files import BringYourOwn, StoredCertificate
from adit.edge.certificates import RENEW_AT, RENEW_JITTER, renewal_due
from adit.edge.client_hello import server_name_and_alpn


def _client_hello(name: str, alpn: list[str]) -> bytes:
    context = ssl.create_default_context()
    context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_client_hello_names_and_protocols() -> None:
    hello = _client_hello("Www.Example.com", [ACME_TLS_ALPN, "http/1.1"])
    assert server_name_and_alpn(hello) == ("www.example.com", (ACME_TLS_ALPN, "http/1.1"))
    assert server_name_and_alpn(hello[:40]) is None
    assert server_name_and_alpn(b"GET / HTTP/1.1\r\n\r\n") is None


def test_tls_alpn_context_only_for_acme_tls_offers() -> None:
    solver = TlsAlpn01Solver()
    idle = solver.pending
    assert not idle
    solver.present("www.example.com", "tok", "tok.thumb")
    assert solver.pending
    assert solver.context_for_hello(_client_hello("www.example.com", [ACME_TLS_ALPN]))
    # A visitor of the same name during the validation: its real certificate, not this.
    assert solver.context_for_hello(_client_hello("www.example.com", ["http/1.1"])) is None
    assert solver.context_for_hello(_client_hello("other.example.com", [ACME_TLS_ALPN])) is None
    solver.cleanup("www.example.com", "other-token")
    assert solver.pending
    solver.cleanup("www.example.com", "tok")
    done = solver.pending
    assert not done


def test_tls_alpn_challenge_shared_with_another_process(tmp_path: Path) -> None:
    directory = tmp_path / "tls-alpn-01"
    orderer, other = TlsAlpn01Solver(directory), TlsAlpn01Solver(directory)
    hello = _client_hello("www.example.com", [ACME_TLS_ALPN])
    assert not _pending(other)
    assert other.context_for_hello(hello) is None
    orderer.present("www.example.com", "tok", "tok.thumb")
    path = directory / "www.example.com"
    assert path.stat().st_mode & 0o777 == 0o600
    # The other process peeks now, and answers the CA's handshake from the file...
    assert _pending(other)
    context = other.context_for_hello(hello)
    assert context is not None and other.context_for_hello(hello) is context  # made once
    # ...never a visitor's, nor another name's.
    assert other.context_for_hello(_client_hello("www.example.com", ["h2"])) is None
    assert other.context_for_hello(_client_hello("x.example.com", [ACME_TLS_ALPN])) is None
    # Cleaned up after the validation (only by the challenge's own token).
    orderer.cleanup("www.example.com", "other-token")
    assert path.exists()
    orderer.cleanup("www.example.com", "tok")
    assert not path.exists()
    assert not _pending(other)
    assert other.context_for_hello(hello) is None


def _pending(solver: TlsAlpn01Solver) -> bool:
    return solver.pending


def test_challenge_certificate_carries_the_digest() -> None:
    from cryptography import x509

    leaf = challenge_certificate("www.example.com", "tok.thumb")
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pem.encode())
    extension = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    assert extension.critical
    assert len(extension.value.public_bytes()) == 34  # OCTET STRING of a SHA-256


def test_http01_answers_known_tokens_only(tmp_path: Path) -> None:
    solver = Http01Solver(tmp_path / "http-01")
    solver.present("www.example.com", "abc_DEF-1", "abc_DEF-1.thumb")
    assert solver.response(CHALLENGE_PATH + b"abc_DEF-1") == b"abc_DEF-1.thumb"
    # Another process's solver, same state directory: answered from the file.
    assert Http01Solver(tmp_path / "http-01").response(CHALLENGE_PATH + b"abc_DEF-1")
    assert (tmp_path / "http-01" / "abc_DEF-1").stat().st_mode & 0o777 == 0o600
    assert solver.response(CHALLENGE_PATH + b"unknown") is None
    assert solver.response(CHALLENGE_PATH + b"../../etc/passwd") is None
    assert solver.response(CHALLENGE_PATH + b"\xff") is None
    solver.cleanup("www.example.com", "abc_DEF-1")
    assert solver.response(CHALLENGE_PATH + b"abc_DEF-1") is None


def _stored(names: list[str]) -> StoredCertificate:
    from adit.edge.cert_files import _parse

    leaf = EdgeCA.generate().issue_leaf(names)
    return _parse(leaf.cert_chain_pem, leaf.key_pem, "test", 0)


def test_renewal_at_two_thirds_with_jitter() -> None:
    stored = _stored(["www.example.com"])
    start, end = stored.not_before.timestamp(), stored.not_after.timestamp()
    rng = random.Random(7)
    dues = [renewal_due(stored, rng) for _ in range(200)]
    low = start + (end - start) * (RENEW_AT - RENEW_JITTER)
    high = start + (end - start) * (RENEW_AT + RENEW_JITTER)
    assert all(low <= due <= high for due in dues)
    assert len(set(dues)) > 1


def test_bring_your_own_layout(tmp_path: Path) -> None:
    ca = EdgeCA.generate()
    wild = ca.issue_leaf(["*.example.com"])
    (tmp_path / "wild.crt").write_text(wild.cert_chain_pem)
    (tmp_path / "wild.key").write_text(wild.key_pem)
    mismatched = ca.issue_leaf(["bad.example.org"])
    (tmp_path / "bad.crt").write_text(mismatched.cert_chain_pem)
    (tmp_path / "bad.key").write_text(ca.issue_leaf(["x.example.org"]).key_pem)
    byo = BringYourOwn(tmp_path)
    assert byo.poll()
    assert not byo.poll()  # nothing changed
    found = byo.find("www.example.com")
    assert found is not None and found.names == ("*.example.com",)
    assert byo.find("a.b.example.com") is None  # a wildcard covers one label
    assert byo.find("example.com") is None
    assert any("does not match" in e for e in byo.errors.values())
    assert found.not_after > datetime.datetime.now(datetime.UTC)
