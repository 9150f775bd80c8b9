"""The public HTTPS listener's certificates: bring-your-own, then ACME, then the edge CA's.

:class:`CertificateManager` keeps, per routed hostname, the certificate the SNI callback
serves and a schedule: a certificate is ordered when a hostname is routed (and at start for
every routed hostname without one; never for a name nobody routed), renewed at two thirds of
its life with jitter (or when the CA's ARI suggests), and retried with exponential backoff
after a failure. A new certificate replaces the SSL context the callback hands out: handshakes
from then on get it, connections already up keep theirs. A failure leaves what is served
alone (the previous certificate, else the edge CA's leaf), and says why: a warning once per
hostname and failure kind, ``status.json`` for ``adit edge cert list``, and
``adit_edge_acme_failures_total{kind}``.

Wildcard routes (``*.example.com``) are ordered with DNS-01 (:mod:`adit.edge.acme_dns01`), the
only challenge a CA offers for them, and only in a zone with an RFC 2136 target (``adit edge
zone dns``): elsewhere no order is made (it could not succeed) and the status says why, logged
once. The SNI callback serves a name's own certificate before its parent's wildcard one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adit.edge.acme_challenges import ChallengeSolver
from adit.edge.acme_dns01 import Dns01Solver
from adit.edge.acme_issuer import Issued, IssueError, Issuer
from adit.edge.cert_files import BringYourOwn, CertificateFiles, StoredCertificate
from adit.edge.public_tls import harden_public_tls

__all__ = ["CertificateManager", "renewal_due"]

log = logging.getLogger("adit.edge.certificates")

#: How often hostnames, files and schedules are looked at.
TICK = 1.0
#: First retry after a failed order, doubled each failure up to :data:`BACKOFF_MAX`.
BACKOFF_BASE = 30.0
BACKOFF_MAX = 6 * 3600.0
#: Renewal at this fraction of a certificate's life...
RENEW_AT = 2 / 3
#: ...give or take this fraction of its life (several edges do not renew all at once).
RENEW_JITTER = 0.03
#: Every this many ticks the files are looked at: another process's new certificate, a
#: renewal request from ``adit edge cert renew`` (a stat per hostname, off the hot path).
FILE_CHECK_TICKS = 3
#: Orders running at once (each on a thread; they mostly wait on the CA).
MAX_ORDERS = 2
#: How often a name that no challenge can answer (a wildcard in a zone without a DNS target)
#: is looked at again: the administrator may have run ``adit edge zone dns`` since.
UNANSWERABLE_RECHECK = 10.0
#: The status's ``last_error_kind`` for such a name (no order made, no ACME failure counted).
NO_DNS_TARGET = "no-dns-target"


def renewal_due(stored: StoredCertificate, rng: random.Random) -> float:
    """When (a ``time.time()``) to renew: two thirds of its life, with jitter."""
    start = stored.not_before.timestamp()
    life = max(1.0, stored.not_after.timestamp() - start)
    return start + life * (RENEW_AT + rng.uniform(-RENEW_JITTER, RENEW_JITTER))


@dataclass
class _Host:
    served: StoredCertificate | None = None
    context: ssl.SSLContext | None = None
    #: time.time() of the next order (0: now).
    due: float = 0.0
    failures: int = 0
    last_error: str = ""
    last_error_kind: str = ""
    logged_kinds: frozenset[str] = frozenset()
    ordering: bool = False


class CertificateManager:
    """Certificates by hostname for the HTTPS listener's SNI callback (event-loop side),
    orders on worker threads."""

    def __init__(
        self,
        state_dir: Path,
        routed: Callable[[], Iterable[str]],
        *,
        issuer: Issuer | None,
        solvers: Sequence[ChallengeSolver],
        dns01: Dns01Solver | None = None,
        certificate_dir: Path | None = None,
    ) -> None:
        self.files = CertificateFiles(state_dir)
        self._routed = routed
        self._issuer = issuer
        self._solvers = solvers
        self._dns01 = dns01
        self.byo = BringYourOwn(certificate_dir) if certificate_dir is not None else None
        self._byo_contexts: dict[str, ssl.SSLContext] = {}
        self._hosts: dict[str, _Host] = {}
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        self._orders: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._ticks = 0
        #: ACME failures by kind since start (the metric).
        self.failures: dict[str, int] = {}

    # -- the SNI callback's side ----------------------------------------------------------

    def context_for(self, hostname: str) -> ssl.SSLContext | None:
        """The context to present for ``hostname``: BYO, else ACME's; None: the edge CA's."""
        if self.byo is not None:
            stored = self.byo.find(hostname)
            if stored is not None:
                context = self._byo_contexts.get(stored.source)
                if context is not None:
                    return context
        host = self._hosts.get(hostname)
        if host is not None and host.context is not None:
            return host.context
        # A wildcard covers one label (RFC 6125 §6.4.3): a.example.com, not a.b.example.com.
        parent = hostname.partition(".")[2]
        wildcard = self._hosts.get(f"*.{parent}") if parent else None
        return None if wildcard is None else wildcard.context

    # -- the schedule ----------------------------------------------------------------------

    def start(self) -> None:
        """Load what is on disk for the routed hostnames now (a restart serves them from its
        first handshake), then run the schedule."""
        self._poll_byo()
        for name in self._routed():
            if _orderable(name) and name not in self._hosts:
                self._hosts[name] = _Host()
                self._reload(name, self._hosts[name])
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, *self._orders):
            if task is not None:
                task.cancel()
        for task in (self._task, *self._orders):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:
                log.exception("certificate manager: unexpected error (carrying on)")
            await asyncio.sleep(TICK)

    def _tick(self) -> None:
        self._poll_byo()
        wanted = {name for name in self._routed() if _orderable(name)}
        for name in wanted - self._hosts.keys():
            self._hosts[name] = _Host()
            self._reload(name, self._hosts[name])
        now = time.time()
        self._ticks += 1
        check_files = self._ticks % FILE_CHECK_TICKS == 0
        for name, host in self._hosts.items():
            if name not in wanted:
                continue  # unrouted: nothing renewed; what it had is still served
            if host.ordering:
                continue
            if check_files and self.files.mtime_ns(name) != (
                host.served.mtime_ns if host.served else 0
            ):
                self._reload(name, host)  # another edge process issued it
            if check_files and self.files.take_renewal_request(name):
                log.info("certificate for %s: renewal requested", name)
                host.due = 0.0
            if self.byo is not None and self.byo.find(name) is not None:
                continue  # the operator's certificate wins; no order for its names
            if self._issuer is None or host.due > now or len(self._orders) >= MAX_ORDERS:
                continue
            solvers = self._solvers_for(name)
            if not solvers:
                self._unanswerable(name, host, now)
                continue
            host.ordering = True
            task = asyncio.get_running_loop().create_task(self._order(name, host, solvers))
            self._orders.add(task)
            task.add_done_callback(self._orders.discard)

    def _solvers_for(self, name: str) -> list[ChallengeSolver]:
        """The solvers that can answer for ``name``: DNS-01 alone for a wildcard; for another
        name the listeners' solvers, plus DNS-01 when ``--acme-challenges`` lists it and the
        name's zone has a DNS target (the issuer keeps the configured order)."""
        assert self._issuer is not None
        dns01 = self._dns01
        answerable = dns01 is not None and dns01.can_answer(name)
        if name.startswith("*."):
            return [dns01] if dns01 is not None and answerable else []
        solvers = list(self._solvers)
        if dns01 is not None and answerable and dns01.kind in self._issuer.settings.challenges:
            solvers.append(dns01)
        return solvers

    def _unanswerable(self, name: str, host: _Host, now: float) -> None:
        """No order for ``name``: none could succeed. Said once, looked at again later."""
        host.due = now + UNANSWERABLE_RECHECK
        if host.last_error_kind == NO_DNS_TARGET:
            return
        if name.startswith("*."):
            why = "a wildcard needs DNS-01, and its zone has no DNS server"
        else:
            why = "--acme-challenges offers only dns-01, and its zone has no DNS server"
        zone = (self._dns01.zone_of(name) if self._dns01 is not None else None) or "ZONE"
        host.last_error = (
            f"{why}: the edge's administrator sets one with adit edge zone dns {zone} "
            "--server HOST:PORT --tsig-secret-file FILE"
        )
        host.last_error_kind = NO_DNS_TARGET
        serving = "its previous certificate" if host.served else "the edge CA's certificate"
        log.warning(
            "certificate for %s not ordered: %s; serving %s", name, host.last_error, serving
        )
        self._write_status(name, host)

    def _reload(self, name: str, host: _Host) -> None:
        try:
            stored = self.files.load(name)
        except ValueError as exc:
            log.warning("certificate for %s in %s unreadable: %s", name, self.files.root, exc)
            return
        if stored is None:
            return
        self._serve(name, host, stored)

    def _serve(self, name: str, host: _Host, stored: StoredCertificate) -> None:
        context = stored.leaf.server_context()
        harden_public_tls(context)  # h2 and http/1.1, the listener's TLS versions and ciphers
        host.served, host.context = stored, context
        host.due = renewal_due(stored, self._rng)

    async def _order(self, name: str, host: _Host, solvers: Sequence[ChallengeSolver]) -> None:
        assert self._issuer is not None
        issuer = self._issuer
        try:
            outcome = await asyncio.to_thread(self._order_blocking, issuer, name, solvers)
        except IssueError as exc:
            self._failed(name, host, exc)
        else:
            if outcome is not None:
                stored, ari, kinds = outcome
                self._serve(name, host, stored)
                if ari is not None:
                    host.due = min(host.due, ari)
                host.failures, host.last_error, host.last_error_kind = 0, "", ""
                host.logged_kinds = frozenset()
                log.info(
                    "certificate for %s issued by %s, valid until %s (%s)",
                    name,
                    stored.issuer,
                    stored.not_after.isoformat(),
                    ", ".join(kinds) or "authorisation reused",
                )
                self._write_status(name, host)
            else:
                host.due = time.time() + TICK * 5  # another process is ordering it
        finally:
            host.ordering = False

    def _order_blocking(
        self, issuer: Issuer, name: str, solvers: Sequence[ChallengeSolver]
    ) -> tuple[StoredCertificate, float | None, tuple[str, ...]] | None:
        with self.files.issuing(name) as mine:
            if not mine:
                return None
            issued: Issued = issuer.issue(name, solvers)
            try:
                stored = self.files.save(name, issued.chain_pem, issued.key_pem)
            except (OSError, ValueError) as exc:
                raise IssueError("storage", f"cannot store the certificate: {exc}") from None
        ari = issuer.renewal_time(issued.chain_pem)
        return stored, None if ari is None else ari.timestamp(), issued.challenges

    def _failed(self, name: str, host: _Host, exc: IssueError) -> None:
        host.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (host.failures - 1))
        delay *= self._rng.uniform(0.9, 1.1)
        host.due = time.time() + delay
        host.last_error, host.last_error_kind = str(exc), exc.kind
        self.failures[exc.kind] = self.failures.get(exc.kind, 0) + 1
        serving = "its previous certificate" if host.served else "the edge CA's certificate"
        if exc.kind not in host.logged_kinds:
            host.logged_kinds |= {exc.kind}
            log.warning(
                "certificate for %s not issued (%s): %s; serving %s, retrying in %.0fs",
                name,
                exc.kind,
                exc,
                serving,
                delay,
            )
        else:
            log.debug("certificate for %s not issued again (%s): %s", name, exc.kind, exc)
        self._write_status(name, host)

    def _write_status(self, name: str, host: _Host) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.files.save_status(name, self.status(name, host))

    def _poll_byo(self) -> None:
        if self.byo is None or not self.byo.poll():
            return
        contexts: dict[str, ssl.SSLContext] = {}
        for path, stored in self.byo.certificates.items():
            try:
                context = stored.leaf.server_context()
            except (ssl.SSLError, OSError) as exc:
                log.warning("certificate %s not loaded: %s", path, exc)
                continue
            harden_public_tls(context)  # h2 and http/1.1, the listener's TLS versions and ciphers
            contexts[path] = context
            log.info("certificate %s loaded for %s", path, ", ".join(stored.names))
        for problem in self.byo.errors.values():
            log.warning("certificate not loaded: %s", problem)
        self._byo_contexts = contexts

    # -- visibility ----------------------------------------------------------------------

    def status(self, name: str, host: _Host | None = None) -> dict[str, Any]:
        """What ``status.json`` and the API say of a hostname."""
        host = host or self._hosts.get(name) or _Host()
        byo = self.byo.find(name) if self.byo is not None else None
        served = byo or host.served
        return {
            "hostname": name,
            "source": "file" if byo else ("acme" if host.served else "edge-ca"),
            "path": byo.source if byo else None,
            "issuer": served.issuer if served else None,
            "not_before": served.not_before.isoformat() if served else None,
            "not_after": served.not_after.isoformat() if served else None,
            "renew_at": _iso(host.due) if host.served and not byo else None,
            "next_attempt": _iso(host.due) if host.failures else None,
            "failures": host.failures,
            "last_error": host.last_error or None,
            "last_error_kind": host.last_error_kind or None,
        }

    def expiries(self) -> Iterator[tuple[str, str, float]]:
        """``(hostname, source, not_after timestamp)`` of every certificate served for a
        routed hostname (the metric)."""
        for name, host in sorted(self._hosts.items()):
            byo = self.byo.find(name) if self.byo is not None else None
            served = byo or host.served
            if served is not None:
                yield name, "file" if byo else "acme", served.not_after.timestamp()


def _orderable(name: str) -> bool:
    """Whether a routed name is one to order: none of the edge's own quick-tunnel names under
    ``localhost``, which no CA certifies (wildcards are, with DNS-01)."""
    return name != "localhost" and not name.endswith(".localhost")


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat()
