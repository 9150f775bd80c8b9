"""A throwaway CA and a leaf for 127.0.0.1, localhost and *.example.test, written as PEM files,
for the test services that speak TLS (the OpenID Provider)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adit.edge.ca import EdgeCA


@dataclass(frozen=True)
class ServiceCa:
    ca: Path
    cert: Path
    key: Path


def write_service_ca(folder: Path) -> ServiceCa:
    folder.mkdir(parents=True, exist_ok=True)
    # The edge's own CA code makes test CAs too (EdgeCA.generate is for tests).
    ca = EdgeCA.generate("adit access test CA")
    leaf = ca.issue_leaf(["localhost", "*.example.test"], ["127.0.0.1"])
    out = ServiceCa(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    out.ca.write_text(ca.cert_pem)
    out.cert.write_text(leaf.cert_chain_pem)
    out.key.write_text(leaf.key_pem)
    out.key.chmod(0o600)
    return out
