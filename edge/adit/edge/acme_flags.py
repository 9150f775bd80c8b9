"""``adit edge --acme-*`` and ``--certificate-dir``, checked before the edge starts: one line
naming the flag and the fix (:class:`~adit.edge.flag_checks.EdgeFlagError`), never a
traceback. The EAB HMAC key is a secret: read from a file (``--acme-eab-hmac-key FILE``) or
the environment (``ADIT_EDGE_ACME_EAB_HMAC_KEY``), never from the command line, never logged.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from adit.edge.acme_issuer import AcmeSettings
from adit.edge.flag_checks import EdgeFlagError

__all__ = ["CHALLENGE_TYPES", "EAB_HMAC_ENV", "acme_settings", "check_certificate_dir"]

CHALLENGE_TYPES = ("tls-alpn-01", "http-01", "dns-01")
EAB_HMAC_ENV = "ADIT_EDGE_ACME_EAB_HMAC_KEY"
_OFF = frozenset({"", "off", "none", "false", "no"})
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def acme_settings(
    directory: str,
    email: str | None,
    eab_kid: str | None,
    eab_hmac_key_file: Path | None,
    ca_bundle: Path | None,
    challenges: str,
) -> AcmeSettings | None:
    """The checked ACME settings; None when ``--acme-directory`` turns ACME off."""
    if directory.strip().lower() in _OFF:
        return None
    url = urlsplit(directory)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise EdgeFlagError(
            f"--acme-directory {directory!r} is no URL: give the CA's directory URL "
            "(https://acme-v02.api.letsencrypt.org/directory) or 'off'"
        )
    if email is not None and _EMAIL.fullmatch(email) is None:
        raise EdgeFlagError(f"--acme-email {email!r} is no e-mail address (name@example.com)")
    hmac_key = os.environ.get(EAB_HMAC_ENV) or None
    if eab_hmac_key_file is not None:
        try:
            hmac_key = eab_hmac_key_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgeFlagError(
                f"--acme-eab-hmac-key {eab_hmac_key_file}: cannot read it "
                f"({getattr(exc, 'strerror', None) or exc}): give a file holding the CA's key"
            ) from None
    if bool(eab_kid) != bool(hmac_key):
        raise EdgeFlagError(
            "--acme-eab-kid and --acme-eab-hmac-key (or "
            f"{EAB_HMAC_ENV}) go together: the CA gives both for external account binding"
        )
    if hmac_key is not None:
        try:
            standard = hmac_key.replace("-", "+").replace("_", "/")
            base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise EdgeFlagError(
                "--acme-eab-hmac-key: the key is not base64url (copy it as the CA shows it)"
            ) from None
    if ca_bundle is not None:
        try:
            x509.load_pem_x509_certificates(ca_bundle.read_bytes())
        except (OSError, ValueError) as exc:
            raise EdgeFlagError(
                f"--acme-ca-bundle {ca_bundle}: not a PEM certificate bundle "
                f"({getattr(exc, 'strerror', None) or exc})"
            ) from None
    kinds = tuple(k.strip().lower() for k in challenges.split(",") if k.strip())
    unknown = [k for k in kinds if k not in CHALLENGE_TYPES]
    if unknown or not kinds:
        raise EdgeFlagError(
            f"--acme-challenges {challenges!r}: give one or more of "
            f"{', '.join(CHALLENGE_TYPES)}, comma-separated"
        )
    return AcmeSettings(
        directory=directory,
        email=email,
        eab_kid=eab_kid or None,
        eab_hmac_key=hmac_key,
        ca_bundle=ca_bundle,
        challenges=kinds,
    )


def check_certificate_dir(path: Path | None) -> None:
    """``--certificate-dir`` must be a readable directory."""
    if path is None:
        return
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise EdgeFlagError(
            f"--certificate-dir {path}: not a readable directory (it holds NAME.crt/NAME.key pairs)"
        )
