"""Issue 18: ``--access-log-retention`` at work in a real edge. Two edge processes share one
state directory: the first (the default 30 days) records decisions; the second, started with
a one-second retention once those are older than that, sweeps at start and says so in its log.
Then the old decisions are gone from ``adit access logs`` and new ones (made after the sweep,
through either process) are there: the next sweep is a minute away."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from harness import Account, Edge, Processes, create_tunnel, request, start_edge

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

HOST = "ledger.example.test"

DOCUMENT = f"""\
apps:
  - name: Ledger
    domain: {HOST}
    policies:
      - name: staff
        decision: allow
        include: [{{email_domain: {{domain: example.com}}}}]
"""


def _logs(account: Account) -> list[dict[str, object]]:
    out = account.cli("access", "logs", "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def _wait_for_rays(account: Account, rays: set[str]) -> list[dict[str, object]]:
    """The access log once it holds every one of ``rays`` (written a moment after the
    decision: bounded wait)."""
    deadline = time.monotonic() + 15
    lines = _logs(account)
    while not rays <= {str(line["ray_id"]) for line in lines} and time.monotonic() < deadline:
        time.sleep(0.2)
        lines = _logs(account)
    return lines


def _refused(edge: Edge) -> str:
    """One request without credentials (a decision: login required); its Ray ID."""
    reply = request(edge, HOST)
    assert reply.status == 401
    ray = reply.header("cf-ray")
    assert ray
    return ray


def test_a_short_retention_sweeps_old_decisions_and_keeps_new_ones(
    edge: Edge, account: Account, processes: Processes, tmp_path: Path
) -> None:
    create_tunnel(account, "ledger", HOST)
    spec = tmp_path / "access.yml"
    spec.write_text(DOCUMENT)
    account.cli("access", "apply", "-f", str(spec))

    old = {_refused(edge), _refused(edge)}
    lines = _wait_for_rays(account, old)
    assert old <= {str(line["ray_id"]) for line in lines}
    written = max(str(line["created_at"]) for line in lines)

    # A second process on the same store, with a one-second retention, started once the
    # decisions above are past it (no clock is read by an assertion: the sweep's own cutoff
    # is checked against the rows' times below).
    time.sleep(1.5)
    (processes.tmp / "short-state").symlink_to(edge.state_dir)
    short = start_edge(processes, "short", extra=["--access-log-retention", "1s"])
    text = short.proc.wait_for_log(r"access log: \d+ decisions before \S+ deleted")
    match = re.search(r"access log: (\d+) decisions before (\S+) deleted \(retention 1s\)", text)
    assert match is not None, text
    assert int(match.group(1)) >= len(old)
    assert match.group(2) > written  # every old row was before the cutoff

    new = {_refused(short), _refused(edge)}
    lines = _wait_for_rays(account, new)
    rays = {str(line["ray_id"]) for line in lines}
    assert new <= rays
    assert not old & rays
    assert all(line["app_domain"] == HOST for line in lines)
