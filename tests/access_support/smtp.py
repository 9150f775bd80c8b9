"""A real SMTP server for tests (aiosmtpd) on 127.0.0.1 that keeps every mail it is sent."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from access_support.pki import ServiceCa
from ports import free_port


@dataclass
class Mailbox:
    """The mails an :func:`smtp_server` caught, in order."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int = 1, timeout: float = 15.0) -> list[EmailMessage]:
        """At least ``count`` mails (bounded wait), or AssertionError."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.messages)} of {count} mails arrived")
                self._arrived.wait(left)
            return list(self.messages)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()
        return "250 OK"


@contextmanager
def smtp_server(tls: ServiceCa | None = None) -> Iterator[Mailbox]:
    """An SMTP server (no auth) running in its own thread until the block ends; with ``tls``
    it offers STARTTLS with that CA's leaf and refuses mail before it."""
    mailbox = Mailbox(port=free_port())
    options: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key)
        options = {"tls_context": context, "require_starttls": True}
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=mailbox.port, ready_timeout=10, **options
    )
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()
