"""Access's one-time PIN login: a 6-digit code mailed to the visitor.

A :class:`PinBook` holds one challenge per e-mail address (sans-IO; time is a parameter):

========== =================== ==================================================
state      input               result
========== =================== ==================================================
(none)     issue               PENDING (a new PIN, PIN_LIFETIME to live)
PENDING    right PIN           ACCEPTED, challenge gone (single use)
PENDING    wrong PIN           PENDING, one attempt less; LOCKED after MAX_ATTEMPTS
PENDING    issue               PENDING with a new PIN (at most MAX_ISSUES per lifetime)
LOCKED     any PIN             LOCKED until the lock ends (even the right PIN)
LOCKED     issue               refused until the lock ends
any        after expiry        EXPIRED, challenge gone
========== =================== ==================================================

Invariants: the PIN itself is never stored (only an HMAC under a per-process key), never
logged, and compared in constant time; a reissued PIN keeps the failure count, so asking for
new PINs does not buy more guesses.

:class:`PinMailer` sends the mail through :mod:`smtplib` in a thread (STARTTLS optional).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import secrets
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage

__all__ = [
    "MAX_ATTEMPTS",
    "PIN_LIFETIME",
    "PinBook",
    "PinLocked",
    "PinMailer",
    "PinResult",
    "SmtpSettings",
    "pin_message",
]

PIN_DIGITS = 6
#: Seconds a PIN is good for (Cloudflare's one-time PIN: 10 minutes).
PIN_LIFETIME = 600.0
#: Wrong PINs before the address is locked for the rest of the PIN's lifetime.
MAX_ATTEMPTS = 5
#: PINs mailed to one address per lifetime: bounds the mail an attacker can make us send.
MAX_ISSUES = 5
#: Addresses with a pending PIN, at most (oldest dropped first).
MAX_CHALLENGES = 10_000


class PinResult(enum.Enum):
    ACCEPTED = "accepted"
    WRONG = "wrong"
    LOCKED = "locked"
    EXPIRED = "expired"
    #: No PIN was asked for this address (or it was already used).
    UNKNOWN = "unknown"


class PinLocked(Exception):
    """No new PIN for this address now: locked after wrong guesses, or too many asked for."""


@dataclass
class _Challenge:
    digest: bytes = field(repr=False)
    expires_at: float
    failures: int = 0
    issues: int = 1


def _normalise(email: str) -> str:
    return email.strip().lower()


class PinBook:
    """Pending PINs by e-mail address."""

    def __init__(self, lifetime: float = PIN_LIFETIME, limit: int = MAX_CHALLENGES) -> None:
        self._lifetime = lifetime
        self._limit = limit
        self._key = secrets.token_bytes(32)
        self._challenges: dict[str, _Challenge] = {}

    def _digest(self, email: str, pin: str) -> bytes:
        return hmac.new(self._key, f"{email}\0{pin}".encode(), hashlib.sha256).digest()

    def issue(self, email: str, now: float) -> str:
        """A new PIN for ``email`` (to be mailed, never logged); :class:`PinLocked` if the
        address is locked or has been sent MAX_ISSUES PINs this lifetime."""
        email = _normalise(email)
        pin = f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}"
        current = self._challenges.get(email)
        if current is not None and now < current.expires_at:
            if current.failures >= MAX_ATTEMPTS or current.issues >= MAX_ISSUES:
                raise PinLocked(f"too many attempts for {email}; try again in a few minutes")
            current.digest = self._digest(email, pin)
            current.issues += 1
            return pin
        if len(self._challenges) >= self._limit:
            self._expire(now)
            while len(self._challenges) >= self._limit:
                del self._challenges[next(iter(self._challenges))]
        self._challenges.pop(email, None)
        self._challenges[email] = _Challenge(self._digest(email, pin), now + self._lifetime)
        return pin

    def check(self, email: str, pin: str, now: float) -> PinResult:
        """Whether ``pin`` is the one mailed to ``email`` (see the module's table)."""
        email = _normalise(email)
        challenge = self._challenges.get(email)
        if challenge is None:
            return PinResult.UNKNOWN
        if now >= challenge.expires_at:
            del self._challenges[email]
            return PinResult.EXPIRED
        if challenge.failures >= MAX_ATTEMPTS:
            return PinResult.LOCKED
        candidate = pin.strip()
        # The digest is computed for any input, so its length or form says nothing by timing.
        if hmac.compare_digest(self._digest(email, candidate), challenge.digest):
            del self._challenges[email]
            return PinResult.ACCEPTED
        challenge.failures += 1
        return PinResult.LOCKED if challenge.failures >= MAX_ATTEMPTS else PinResult.WRONG

    def _expire(self, now: float) -> None:
        for email in [e for e, c in self._challenges.items() if now >= c.expires_at]:
            del self._challenges[email]


@dataclass(frozen=True, kw_only=True)
class SmtpSettings:
    """An account's SMTP server for one-time PIN mails."""

    host: str
    port: int = 587
    sender: str
    #: STARTTLS after EHLO (port 587); ``ssl`` is TLS from the first byte (port 465).
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: A PEM bundle of CAs for the server's certificate (None: the system's store).
    ca_bundle: str | None = None
    timeout: float = 15.0


def pin_message(settings: SmtpSettings, to: str, pin: str, application: str) -> EmailMessage:
    """The PIN mail: plain text, the application named, the PIN on a line of its own."""
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = f"Your login code for {application}"
    message.set_content(
        f"Your one-time login code for {application} is:\n\n"
        f"    {pin}\n\n"
        f"It is good for {int(PIN_LIFETIME // 60)} minutes and can be used once.\n"
        "If you did not ask for it, ignore this mail.\n"
    )
    return message


class PinMailer:
    """Sends PIN mails through one SMTP server; errors say where, never the PIN."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    async def send(self, to: str, pin: str, application: str) -> None:
        message = pin_message(self.settings, to, pin, application)
        await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        context = ssl.create_default_context(cafile=s.ca_bundle)
        try:
            smtp: smtplib.SMTP
            if s.ssl:
                smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            with smtp:
                if s.starttls and not s.ssl:
                    smtp.starttls(context=context)
                if s.username is not None:
                    smtp.login(s.username, s.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            # str(exc) of smtplib never holds the message body, so the PIN stays out of logs.
            raise OSError(f"SMTP {s.host}:{s.port}: {type(exc).__name__}: {exc}") from None
