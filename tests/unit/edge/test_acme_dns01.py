"""DNS-01 pieces that need no CA or DNS server: the TXT value, the flag, and SNI choosing a
wildcard certificate (the real issuance is tests/process/test_acme_dns01.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from acme import challenges
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWKEC

from adit.edge.acme_dns01 import txt_value
from adit.edge.acme_flags import acme_settings
from adit.edge.ca import EdgeCA
from adit.edge.certificates import CertificateManager
from adit.edge.flag_checks import EdgeFlagError


def test_txt_value_is_what_the_acme_library_validates() -> None:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    chall = challenges.DNS01(token=b"t" * 32)
    key_authorization = chall.key_authorization(key)
    assert txt_value(key_authorization) == chall.validation(key)
    assert len(txt_value(key_authorization)) == 43


def test_dns01_is_a_challenge_type_of_the_flag() -> None:
    settings = acme_settings("https://ca.example/dir", None, None, None, None, "dns-01,http-01")
    assert settings is not None and settings.challenges == ("dns-01", "http-01")
    with pytest.raises(EdgeFlagError, match="dns-01"):
        acme_settings("https://ca.example/dir", None, None, None, None, "dns-02")


def test_sni_serves_a_wildcard_certificate_one_label_down(tmp_path: Path) -> None:
    ca = EdgeCA.generate()
    routed = ["*.example.com", "own.example.com"]
    manager = CertificateManager(tmp_path, lambda: routed, issuer=None, solvers=[])
    for name in routed:
        leaf = ca.issue_leaf([name])
        manager.files.save(name, leaf.cert_chain_pem, leaf.key_pem)

    async def scenario() -> None:
        manager.start()
        try:
            wildcard = manager.context_for("*.example.com")
            own = manager.context_for("own.example.com")
            assert wildcard is not None and own is not None and wildcard is not own
            assert manager.context_for("a.example.com") is wildcard
            assert manager.context_for("own.example.com") is own  # its own wins
            assert manager.context_for("a.b.example.com") is None  # one label only
            assert manager.context_for("example.com") is None
        finally:
            await manager.stop()

    asyncio.run(scenario())
