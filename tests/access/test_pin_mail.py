"""PIN mails through smtplib with STARTTLS to a real SMTP server (aiosmtpd) that requires it,
trusting only the configured CA; failures name the server, never the PIN."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from access_support.pki import write_service_ca
from access_support.smtp import Mailbox, smtp_server
from adit.edge.access.pin import PinMailer, SmtpSettings

pytestmark = pytest.mark.process


def pin_of(mailbox: Mailbox, address: str) -> str:
    mailbox.wait_for(1)
    body = mailbox.to(address)[-1].get_body(("plain",))
    assert body is not None
    match = re.search(r"^ +(\d{6})\s*$", body.get_content(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_pin_mail_over_starttls_trusting_the_configured_ca(tmp_path: Path) -> None:
    ca = write_service_ca(tmp_path / "pki")
    with smtp_server(tls=ca) as mailbox:
        settings = SmtpSettings(
            host="127.0.0.1",
            port=mailbox.port,
            sender="access@example.test",
            ca_bundle=str(ca.ca),
        )
        asyncio.run(PinMailer(settings).send("carol@example.com", "123456", "Test App"))
        assert pin_of(mailbox, "carol@example.com") == "123456"
        # Without STARTTLS the server takes no mail, and the error says where, not the PIN.
        plain = SmtpSettings(
            host="127.0.0.1", port=mailbox.port, sender="access@example.test", starttls=False
        )
        with pytest.raises(OSError, match=f"SMTP 127.0.0.1:{mailbox.port}") as refused:
            asyncio.run(PinMailer(plain).send("carol@example.com", "654321", "Test App"))
        assert "654321" not in str(refused.value)
        # Nor with a CA that did not sign its certificate.
        other = write_service_ca(tmp_path / "other")
        untrusted = SmtpSettings(
            host="127.0.0.1", port=mailbox.port, sender="a@example.test", ca_bundle=str(other.ca)
        )
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(PinMailer(untrusted).send("carol@example.com", "111111", "Test App"))
        assert len(mailbox.messages) == 1
