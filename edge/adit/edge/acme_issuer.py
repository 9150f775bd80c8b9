"""One ACME certificate order, start to finish, with certbot's ``acme`` library (blocking:
the edge runs it on a thread, never on its event loop).

The account key (P-256, ``STATE_DIR/acme/account-key.pem``, mode 0600) is made on first use
and registered with the directory's CA (``--acme-email`` as its contact; ZeroSSL and other CAs
that want external account binding get ``--acme-eab-kid``/``--acme-eab-hmac-key``). Errors are
:class:`IssueError` with a ``kind`` (the metric label and the log's "once per kind") and a
message fit for a log line; secrets are never in either.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from acme.crypto_util import make_csr
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from adit.edge.acme_challenges import ChallengeSolver
from adit.version import __version__

__all__ = ["LETS_ENCRYPT", "AcmeSettings", "IssueError", "Issued", "Issuer"]

#: Let's Encrypt's production directory (``--acme-directory``'s default).
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
#: How long one order may take, challenges and finalisation together.
ORDER_DEADLINE = datetime.timedelta(seconds=90)
_NETWORK_TIMEOUT = 30


@dataclass(frozen=True)
class AcmeSettings:
    """``--acme-*``: where certificates come from."""

    directory: str = LETS_ENCRYPT
    email: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = field(default=None, repr=False)
    #: PEM bundle trusted for the directory's HTTPS (a private CA such as pebble's).
    ca_bundle: Path | None = None
    #: Challenge types in the order tried (those the CA offers and the edge listens for).
    challenges: tuple[str, ...] = ("tls-alpn-01", "http-01")


class IssueError(Exception):
    """An order that failed; ``kind`` is a short label (``connection``, ``acme:rateLimited``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Issued:
    chain_pem: str
    key_pem: str = field(repr=False)
    #: The challenge types answered (none when the CA reused valid authorisations).
    challenges: tuple[str, ...] = ()


class _TlsAlpn01Response(challenges.KeyAuthorizationChallengeResponse):
    """The response (``{}`` on the wire) that says "validate now" for tls-alpn-01, which
    ``acme`` no longer models. A key-authorisation response, not a bare one: ``acme`` sends
    an object without fields as an empty payload, a POST-as-GET that validates nothing."""

    typ = "tls-alpn-01"


challenges.ChallengeResponse.register(_TlsAlpn01Response)


def _key_authorization(token: str, account_key: JWK) -> str:
    thumbprint = jose.b64.b64encode(account_key.thumbprint()).decode("ascii")
    return f"{token}.{thumbprint}"


class Issuer:
    """An ACME account at one directory; :meth:`issue` runs one order (blocking)."""

    def __init__(self, settings: AcmeSettings, acme_dir: Path) -> None:
        self.settings = settings
        self._acme_dir = acme_dir
        self._client: client.ClientV2 | None = None
        self._key: JWKEC | None = None
        #: Orders run on several threads; the account is made (or found) once.
        self._connecting = threading.Lock()

    def _account_key(self) -> JWKEC:
        path = self._acme_dir / "account-key.pem"
        self._acme_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise IssueError("account", f"{path} does not hold an EC private key")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            tmp = path.with_name(".account-key.pem.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            tmp.replace(path)
        return JWKEC(key=key)

    def _connect(self) -> client.ClientV2:
        with self._connecting:
            return self._client or self._make_client()

    def _make_client(self) -> client.ClientV2:
        key = self._key or self._account_key()
        self._key = key
        net = client.ClientNetwork(
            key, alg=ES256, user_agent=f"adit-edge/{__version__}", timeout=_NETWORK_TIMEOUT
        )
        if self.settings.ca_bundle is not None:
            # requests takes a bundle's path where ``verify`` is; ClientNetwork passes it on.
            net.verify_ssl = cast(bool, str(self.settings.ca_bundle))
        directory = client.ClientV2.get_directory(self.settings.directory, net)
        acme = client.ClientV2(directory, net)
        eab = None
        if self.settings.eab_kid and self.settings.eab_hmac_key:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(),
                kid=self.settings.eab_kid,
                hmac_key=self.settings.eab_hmac_key,
                directory=directory,
            )
        registration = messages.NewRegistration.from_data(
            email=self.settings.email,
            terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:
            # The key already has an account: its URL is all that signing needs.
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )
        self._record_account(net.account)
        self._client = acme
        return acme

    def _record_account(self, account: messages.RegistrationResource | None) -> None:
        if account is None:
            return
        path = self._acme_dir / "account.json"
        data = {"directory": self.settings.directory, "uri": account.uri}
        path.write_text(json.dumps(data), encoding="utf-8")

    def issue(self, hostname: str, solvers: Sequence[ChallengeSolver]) -> Issued:
        """Order, prove and fetch a certificate for ``hostname`` (raises :class:`IssueError`)."""
        try:
            return self._issue(hostname, solvers)
        except IssueError:
            raise
        except messages.Error as exc:
            raise IssueError(f"acme:{exc.code or 'error'}", str(exc)) from None
        except errors.ValidationError as exc:
            problems = [
                str(authz.body.challenges[0].error)
                if authz.body.challenges and authz.body.challenges[0].error
                else str(authz.body.status)
                for authz in exc.failed_authzrs
            ]
            raise IssueError("validation", "; ".join(problems) or str(exc)) from None
        except errors.TimeoutError as exc:
            raise IssueError("timeout", f"the order did not complete in time: {exc}") from None
        except requests.exceptions.SSLError as exc:
            self._client = None
            raise IssueError("tls", f"{self.settings.directory}: {exc}") from None
        except requests.exceptions.RequestException as exc:
            self._client = None
            raise IssueError("connection", f"{self.settings.directory}: {exc}") from None
        except (errors.Error, ValueError, KeyError, TypeError, DeserializationError) as exc:
            # A server that answers something that is not ACME.
            self._client = None
            raise IssueError(
                "bad-response",
                f"{self.settings.directory} does not answer as an ACME server does "
                f"({type(exc).__name__}: {exc}): check --acme-directory",
            ) from None

    def _issue(self, hostname: str, solvers: Sequence[ChallengeSolver]) -> Issued:
        acme = self._connect()
        assert self._key is not None
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = acme.new_order(make_csr(key_pem, [hostname]))
        by_kind = {s.kind: s for s in solvers}
        presented: list[tuple[ChallengeSolver, str, str]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                name = authz.body.identifier.value
                offered: dict[str, messages.ChallengeBody] = {}
                for challb in authz.body.challenges:
                    # tls-alpn-01 is an UnrecognizedChallenge to ``acme``: its JSON says.
                    offered[str(challb.chall.to_partial_json().get("type", ""))] = challb
                # The configured order, then what else the caller handed over (DNS-01 for
                # a wildcard, which is the only type a CA offers for one).
                order_of = (
                    *self.settings.challenges,
                    *(k for k in by_kind if k not in self.settings.challenges),
                )
                kind = next((k for k in order_of if k in offered and k in by_kind), None)
                if kind is None:
                    raise IssueError(
                        "no-challenge",
                        f"{name}: the CA offers {', '.join(sorted(offered)) or 'no challenge'},"
                        f" the edge can answer {', '.join(by_kind) or 'none'}",
                    )
                challb = offered[kind]
                token = challb.chall.to_partial_json()["token"]
                solver = by_kind[kind]
                # Listed first: a proof half made (a DNS record added, then its check failed)
                # is cleaned up too. Cleaning up what was never presented is harmless.
                presented.append((solver, name, token))
                solver.present(name, token, _key_authorization(token, self._key))
                response: challenges.ChallengeResponse = (
                    challenges.HTTP01Response()
                    if kind == "http-01"
                    else challenges.DNS01Response()
                    if kind == "dns-01"
                    else _TlsAlpn01Response()
                )
                acme.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + ORDER_DEADLINE
            done = acme.poll_and_finalize(order, deadline)
        finally:
            for solver, name, token in presented:
                solver.cleanup(name, token)
        if not done.fullchain_pem:
            raise IssueError("bad-response", f"{hostname}: the order has no certificate")
        return Issued(
            chain_pem=done.fullchain_pem,
            key_pem=key_pem.decode("ascii"),
            challenges=tuple(dict.fromkeys(solver.kind for solver, _, _ in presented)),
        )

    def renewal_time(self, chain_pem: str) -> datetime.datetime | None:
        """ARI's suggested renewal time when the CA offers it (None otherwise or on error)."""
        try:
            acme = self._connect()
            when, _ = acme.renewal_time(chain_pem.encode("ascii"))
        except Exception:  # ARI is advice: any failure means "no advice"
            return None
        if when is None:
            return None
        return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
