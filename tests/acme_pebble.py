"""pebble (Let's Encrypt's test ACME server) for the edge's ACME tests, on 127.0.0.1.

pebble's HTTPS needs a certificate: a throwaway CA made here signs one for 127.0.0.1, and the
edge trusts that CA with ``--acme-ca-bundle``. pebble validates challenges for real: its
``httpPort``/``tlsPort`` are the edge's public HTTP/HTTPS listener ports, and it resolves the
test hostnames through ``tests/dns_records.py`` (answering 127.0.0.1). The root that signs
what pebble issues is fetched from its management endpoint (``/roots/0``): what ``curl
--cacert`` trusts.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import Proc, Processes
from ports import free_port

PEBBLE = "/usr/bin/pebble"


@dataclass
class Pebble:
    proc: Proc
    directory: str
    #: The CA pebble's own HTTPS certificate comes from (``--acme-ca-bundle``).
    https_ca: Path
    management: str

    def root(self, dest: Path) -> Path:
        """pebble's issuing root (``/roots/0``), written to ``dest``."""
        context = ssl.create_default_context(cafile=str(self.https_ca))
        with urllib.request.urlopen(f"{self.management}/roots/0", context=context) as reply:
            dest.write_bytes(reply.read())
        return dest


def _https_certificate(tmp: Path) -> tuple[Path, Path, Path]:
    """(CA file, certificate file, key file) for pebble's listener on 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test listener CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp / "pebble-ca.pem", tmp / "pebble.pem", tmp / "pebble.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def start_pebble(
    processes: Processes,
    *,
    http_port: int,
    tls_port: int,
    dns_port: int,
    validity: int | None = None,
    listen_port: int | None = None,
    name: str = "pebble",
    eab_keys: dict[str, str] | None = None,
) -> Pebble:
    """pebble validating against ``http_port``/``tls_port`` on 127.0.0.1, names resolved by
    the DNS server on ``dns_port``; ``validity`` (seconds) shortens its certificates' life."""
    tmp = processes.tmp
    https_ca = tmp / "pebble-ca.pem"
    if not https_ca.exists():
        _https_certificate(tmp)
    listen = listen_port or free_port()
    management = free_port()
    config: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{listen}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(tmp / "pebble.pem"),
        "privateKey": str(tmp / "pebble.key"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity is not None:
        config["certificateValidityPeriod"] = validity
    if eab_keys:
        config["externalAccountBindingRequired"] = True
        config["externalAccountMACKeys"] = eab_keys
    config_path = tmp / f"{name}.json"
    config_path.write_text(json.dumps({"pebble": config}))
    proc = processes.start(
        name,
        [PEBBLE, "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns_port}"],
        env={
            "PEBBLE_VA_NOSLEEP": "1",
            # Deterministic: no nonce refused at random, every order validated afresh.
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        },
    )
    proc.wait_for_log(r"Listening on: 127\.0\.0\.1:\d+", timeout=20)
    deadline = time.monotonic() + 10
    pebble = Pebble(
        proc, f"https://127.0.0.1:{listen}/dir", https_ca, f"https://127.0.0.1:{management}"
    )
    while time.monotonic() < deadline:
        try:
            pebble.root(tmp / "pebble-root-probe.pem")
            break
        except OSError:
            time.sleep(0.1)
    return pebble
