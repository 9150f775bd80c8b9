"""Issue 18: an account's Access setup as one YAML file: ``adit access apply -f`` and
``adit access export`` round trip (idempotent, declarative), the admin subcommands beside
``adit access tcp`` and friends, and ``adit access logs --json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    Tunnel,
    add_zone,
    create_tunnel,
    request,
    start_connector,
    write_config,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

HOST = "wiki.example.test"

DOCUMENT = """\
organization:
  auth_domain: team.example.test
identity_providers:
  - name: corp
    type: oidc
    config:
      discovery_url: https://idp.example.test/.well-known/openid-configuration
      client_id: adit-wiki
      client_secret: s3cret-never-shown
      groups_claim_name: groups
service_tokens:
  - name: ci
apps:
  - name: Wiki
    domain: wiki.example.test
    session_duration: 8h
    allowed_idps: [corp]
    policies:
      - name: robots
        decision: non_identity
        include: [{service_token: {token_id: ci}}]
      - name: staff
        decision: allow
        include: [{email_domain: {domain: example.com}}]
        require: [{geo: {country_code: DE}}]
"""


@pytest.fixture
def tunnel(account: Account) -> Tunnel:
    return create_tunnel(account, "wiki", HOST)


@pytest.fixture
def connector(processes: Processes, tunnel: Tunnel, origin: Origin, tmp_path: Path) -> Proc:
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    return start_connector(processes, tunnel, config)


def test_apply_export_round_trip_and_logs(
    edge: Edge, account: Account, connector: Proc, origin: Origin, tmp_path: Path
) -> None:
    add_zone(account, "team.example.test")
    path = tmp_path / "access.yml"
    path.write_text(DOCUMENT)
    first = account.cli("access", "apply", "-f", str(path))
    assert "application wiki.example.test created" in first.stdout
    client_id = next(
        line.split(": ", 1)[1]
        for line in first.stdout.splitlines()
        if line.startswith("CF-Access-Client-Id")
    )
    secret = next(
        line.split(": ", 1)[1]
        for line in first.stdout.splitlines()
        if line.startswith("CF-Access-Client-Secret")
    )
    # Applying the same file again changes nothing.
    again = account.cli("access", "apply", "-f", str(path))
    assert "No changes" in again.stdout, again.stdout

    exported = yaml.safe_load(account.cli("access", "export").stdout)
    assert "s3cret-never-shown" not in json.dumps(exported)
    assert exported["identity_providers"][0]["config"]["client_secret"] == "*****"
    (wiki,) = exported["apps"]
    assert wiki["domain"] == HOST and wiki["allowed_idps"] == ["corp"]
    assert [p["name"] for p in wiki["policies"]] == ["robots", "staff"]
    assert wiki["policies"][0]["include"] == [{"service_token": {"token_id": "ci"}}]
    # The export applies as it is, with no change (secrets kept).
    path.write_text(yaml.safe_dump(exported))
    assert "No changes" in account.cli("access", "apply", "-f", str(path)).stdout

    # The policies are in force: the token created by apply passes, nothing else does.
    good = [("CF-Access-Client-Id", client_id), ("CF-Access-Client-Secret", secret)]
    assert request(edge, HOST, headers=good).status == 200
    assert request(edge, HOST).status == 401
    assert len(origin.seen_headers) == 1

    # Declarative: a policy gone from the file is deleted; the app stays.
    wiki["policies"] = wiki["policies"][1:]
    path.write_text(yaml.safe_dump(exported))
    changed = account.cli("access", "apply", "-f", str(path)).stdout
    assert "policy robots deleted" in changed
    assert request(edge, HOST, headers=good).status == 401

    # The admin subcommands sit beside the client ones.
    listed = account.cli("access", "app", "list").stdout
    assert HOST in listed
    assert "--hostname" in account.cli("access", "tcp", "--help").stdout
    bad = account.cli(
        "access",
        "policy",
        "create",
        "x",
        "--name",
        "n",
        "--decision",
        "allow",
        "--include",
        "nonsense",
        check=False,
    )
    assert bad.returncode != 0 and "KIND:VALUE" in bad.stderr

    deadline = time.monotonic() + 10
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        out = account.cli("access", "logs", "--json").stdout
        lines = [json.loads(line) for line in out.splitlines()]
        if len(lines) >= 3:
            break
        time.sleep(0.3)
    assert {"service", "login"} <= {line["action"] for line in lines}
    assert all(line["app_domain"] == HOST for line in lines)
