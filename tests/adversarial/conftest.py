"""Fixtures for the adversarial tests: a tenant in front of a raw-socket origin, probes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adversary import RawOrigin, Tenant, raw_origin, start_tenant
from harness import Edge, Processes

HOST = "app.example.test"
OTHER_HOST = "other.example.test"


@pytest.fixture
def recorder() -> Iterator[RawOrigin]:
    """A raw-socket origin that records exactly what reaches it."""
    with raw_origin() as origin:
        yield origin


@pytest.fixture
def tenant(processes: Processes, edge: Edge, recorder: RawOrigin) -> Tenant:
    """One account, one tunnel routed at ``app.example.test``, its connector, the recorder."""
    return start_tenant(processes, edge, "acme", HOST, recorder.url)
