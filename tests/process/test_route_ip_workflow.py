"""Private-network routes through the real CLI and a real `adit edge`: `route ip`, `vnet`.

What a user types and reads (cloudflared's commands, messages and tables), the mistakes they
would make, and that a second account neither sees nor uses the first one's routes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import Account, Edge, Processes, login, run_cli, start_location

pytestmark = pytest.mark.process

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ROUTE_HEADER = ["ID", "NETWORK", "VIRTUAL NET ID", "COMMENT", "TUNNEL ID", "TUNNEL NAME"]
ROUTE_HEADER += ["CREATED", "DELETED"]


def created(account: Account, name: str) -> str:
    out = account.cli("tunnel", "create", name).stdout
    match = re.search(rf"Created tunnel {name} with id ({UUID})", out)
    assert match, out
    return match.group(1)


def refused(account: Account, *args: str) -> str:
    """Run a command that must fail as cloudflared's do (exit 1, the reason on stderr)."""
    result = account.cli(*args, check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    return result.stderr.strip()


def table(text: str, header: list[str]) -> list[list[str]]:
    """A Go tabwriter table: every row's cells start where the header's do."""
    lines = text.rstrip("\n").split("\n")
    starts = [lines[0].index(f"{title} ") for title in header]
    assert starts == sorted(starts), lines[0]
    assert lines[0].split("  ")[0] == header[0]
    rows = []
    for line in lines:
        assert len(line) == len(lines[0]), lines  # every cell padded, the last one too
        bounds = [*starts[1:], len(line)]
        cells = [line[a:b] for a, b in zip(starts, bounds, strict=True)]
        assert all(c.endswith(" ") for c in cells), line
        rows.append([c.strip() for c in cells])
    assert rows[0] == header
    return rows[1:]


def test_route_ip_and_vnet_as_a_user_meets_them(
    processes: Processes, edge: Edge, account: Account, tmp_path: Path
) -> None:
    # A second edge on the same state: its watcher must see the first one's writes.
    follower = start_location(processes, "follower", "b", ["127.0.0.1:0"], edge)
    alpha, beta = created(account, "alpha"), created(account, "beta")

    out = account.cli("tunnel", "route", "ip", "add", "10.0.0.0/8", "alpha", "office lan").stdout
    assert out == f"Successfully added route for 10.0.0.0/8 over tunnel {alpha}\n"
    out = account.cli("tunnel", "route", "ip", "add", "10.1.0.0/16", beta).stdout  # overlapping
    assert out == f"Successfully added route for 10.1.0.0/16 over tunnel {beta}\n"
    account.cli("tunnel", "route", "ip", "add", "2001:db8::/32", "alpha")
    follower.proc.wait_for_log(r"private routes changed in the store: 3 private routes")

    # The mistakes a user makes, each with the reason and exit 1.
    assert refused(account, "tunnel", "route", "ip", "add", "10.0.0.0/8", "beta") == (
        "API error: Failed to add route: code: 1014, reason: You already have a route defined "
        f"for this exact IP subnet: 10.0.0.0/8 routes to tunnel {alpha} in virtual network "
        "default. Delete that route first, or add this one to another virtual network (--vnet)"
    )
    assert refused(account, "tunnel", "route", "ip", "add", "10.1.2.3/16", "alpha") == (
        "Invalid network CIDR: 10.1.2.3/16 has host bits set: use 10.1.0.0/16 for the whole "
        "network, or 10.1.2.3/32 for the one address"
    )
    assert refused(account, "tunnel", "route", "ip", "add", "10.1.0.0", "alpha") == (
        "Invalid network CIDR: invalid CIDR address: 10.1.0.0"
    )
    assert refused(account, "tunnel", "route", "ip", "add", "10.2.0.0/16", "nosuch") == (
        "Invalid tunnel: nosuch is neither the ID nor the name of any of your tunnels"
    )
    assert refused(account, "tunnel", "route", "ip", "add", "10.2.0.0/16").startswith(
        "You must supply at least 2 arguments"
    )

    shown = account.cli("tunnel", "route", "ip", "show").stdout
    rows = table(shown, ROUTE_HEADER)
    assert [(r[1], r[3], r[4], r[5], r[7]) for r in rows] == [
        ("10.0.0.0/8", "office lan", alpha, "alpha", "-"),
        ("10.1.0.0/16", "", beta, "beta", "-"),
        ("2001:db8::/32", "", alpha, "alpha", "-"),
    ]
    default_vnet = rows[0][2]
    assert re.fullmatch(UUID, default_vnet) and {r[2] for r in rows} == {default_vnet}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[6]) for r in rows)
    as_json = json.loads(account.cli("tunnel", "route", "ip", "list", "-o", "json").stdout)
    assert [r["id"] for r in as_json] == [r[0] for r in rows]
    assert as_json[0]["deleted_at"] == "0001-01-01T00:00:00Z"
    nsub = account.cli("tunnel", "route", "ip", "show", "--nsub", "10.0.0.0/8").stdout
    assert [r[1] for r in table(nsub, ROUTE_HEADER)] == ["10.0.0.0/8", "10.1.0.0/16"]
    nsup = account.cli("tunnel", "route", "ip", "show", "--nsup", "10.1.2.0/24").stdout
    assert [r[1] for r in table(nsup, ROUTE_HEADER)] == ["10.0.0.0/8", "10.1.0.0/16"]
    assert refused(account, "tunnel", "route", "ip", "show", "--filter-tunnel-id", "abc") == (
        "invalid config for routing filters: Couldn't parse UUID from filter-tunnel-id: "
        "invalid UUID length: 3"
    )

    # Which route serves an address: the longest prefix.
    got = account.cli("tunnel", "route", "ip", "get", "10.1.2.3").stdout
    assert [(r[1], r[5]) for r in table(got, ROUTE_HEADER)] == [("10.1.0.0/16", "beta")]
    got = account.cli("tunnel", "route", "ip", "get", "10.200.0.1").stdout
    assert [(r[1], r[5]) for r in table(got, ROUTE_HEADER)] == [("10.0.0.0/8", "alpha")]
    got = account.cli("tunnel", "route", "ip", "get", "2001:0db8::1").stdout
    assert [r[1] for r in table(got, ROUTE_HEADER)] == ["2001:db8::/32"]
    got = account.cli("tunnel", "route", "ip", "get", "192.0.2.1").stdout
    assert got == "No route matches the IP 192.0.2.1\n"
    assert refused(account, "tunnel", "route", "ip", "get", "10.1.2") == "Invalid IP 10.1.2"

    # Virtual networks: the same space routed twice, apart.
    vnets = table(account.cli("tunnel", "vnet", "list").stdout, _VNET_HEADER)
    assert [(v[0], v[1], v[2]) for v in vnets] == [(default_vnet, "default", "true")]
    added = account.cli("tunnel", "vnet", "add", "staging", "the staging lab").stdout
    match = re.fullmatch(
        rf"Successfully added virtual 'network' staging with ID: ({UUID})\n"
        r"You can now add IP routes attached to this virtual network\. "
        r"See `adit tunnel route ip add --help`\n",
        added,
    )
    assert match, added
    staging = match.group(1)
    account.cli("tunnel", "route", "ip", "add", "--vnet", "staging", "10.0.0.0/8", "beta")
    got = account.cli("tunnel", "route", "ip", "get", "--vnet", "staging", "10.5.5.5").stdout
    assert [(r[2], r[5]) for r in table(got, ROUTE_HEADER)] == [(staging, "beta")]
    got = account.cli("tunnel", "route", "ip", "get", "10.5.5.5").stdout
    assert [(r[2], r[5]) for r in table(got, ROUTE_HEADER)] == [(default_vnet, "alpha")]
    assert refused(account, "tunnel", "route", "ip", "get", "--vnet", "nope", "10.5.5.5") == (
        "there should only be 1 non-deleted virtual network named nope"
    )
    assert refused(account, "tunnel", "vnet", "delete", "staging") == (
        "API error: Failed to delete virtual network: code: 1023, reason: Cannot delete "
        "virtual network staging because IP routes use it (10.0.0.0/8). Delete them first "
        "(adit tunnel route ip delete --vnet staging CIDR), or delete the virtual network with "
        "--force (-f) to delete its routes with it."
    )
    assert "default virtual network" in refused(account, "tunnel", "vnet", "delete", "default")
    out = account.cli("tunnel", "vnet", "update", "-d", "-c", "lab", "staging").stdout
    assert out == "Successfully updated virtual network 'staging'\n"
    defaults = account.cli("tunnel", "vnet", "list", "--is-default").stdout
    assert [(v[1], v[2], v[3]) for v in table(defaults, _VNET_HEADER)] == [
        ("staging", "true", "lab")
    ]
    got = account.cli("tunnel", "route", "ip", "get", "10.5.5.5").stdout  # the new default
    assert [r[5] for r in table(got, ROUTE_HEADER)] == ["beta"]
    account.cli("tunnel", "vnet", "update", "--default", "default")

    out = account.cli("tunnel", "route", "ip", "delete", "--vnet", staging, "10.0.0.0/8").stdout
    assert re.fullmatch(rf"Successfully deleted route with ID {UUID}\n", out), out
    assert refused(account, "tunnel", "route", "ip", "delete", "--vnet", staging, "10.0.0.0/8") == (
        "unable to find route for provided network and vnet"
    )
    out = account.cli("tunnel", "vnet", "delete", "staging").stdout
    assert out == "Successfully deleted virtual network 'staging'\n"
    gone = table(account.cli("tunnel", "vnet", "list", "--show-deleted").stdout, _VNET_HEADER)
    assert [(v[1], v[5] != "-") for v in gone] == [("staging", True)]

    # Deleting routes; deleted ones are listed on request.
    v6_id = rows[2][0]
    out = account.cli("tunnel", "route", "ip", "delete", v6_id).stdout
    assert out == f"Successfully deleted route with ID {v6_id}\n"
    assert refused(account, "tunnel", "route", "ip", "delete", v6_id) == (
        "API error: Failed to delete route: code: 1015, reason: You are trying to modify the "
        "route for a network that isn't routed. Please add the network before modifying it. "
        "Or, check that you specified the correct network."
    )
    assert refused(account, "tunnel", "route", "ip", "delete", "10.1.2.3/16").startswith(
        "Invalid network CIDR: 10.1.2.3/16 has host bits set"
    )
    deleted = account.cli("tunnel", "route", "ip", "show", "--filter-is-deleted").stdout
    assert {r[0] for r in table(deleted, ROUTE_HEADER) if r[7] != "-"} >= {v6_id}

    # A tunnel with routes goes only with -f, and its routes with it.
    assert refused(account, "tunnel", "delete", "alpha") == (
        f"Error deleting tunnel {alpha}: Failed to delete tunnel: code: 1023, reason: Cannot "
        "delete tunnel because it has IP routes (10.0.0.0/8). You can delete the routes with "
        "`adit tunnel route ip delete`, or delete the tunnel with --force (-f) to delete its "
        "routes with it."
    )
    account.cli("tunnel", "delete", "-f", "alpha")
    got = account.cli("tunnel", "route", "ip", "get", "10.200.0.1").stdout
    assert got == "No route matches the IP 10.200.0.1\n"
    left = table(account.cli("tunnel", "route", "ip", "show").stdout, ROUTE_HEADER)
    assert [(r[1], r[5]) for r in left] == [("10.1.0.0/16", "beta")]

    # Another account sees none of it and can use none of it.
    other = login(edge, tmp_path / "other-home", "globex")
    assert other.cli("tunnel", "route", "ip", "show").stdout == (
        "No routes were found for the given filter flags. You can use "
        "'adit tunnel route ip add' to add a route.\n"
    )
    assert other.cli("tunnel", "route", "ip", "get", "10.1.2.3").stdout == (
        "No route matches the IP 10.1.2.3\n"
    )
    assert refused(other, "tunnel", "route", "ip", "add", "10.9.0.0/16", beta) == (
        f"API error: Failed to add route: code: 1003, reason: Tunnel {beta} not found"
    )
    assert refused(other, "tunnel", "route", "ip", "delete", left[0][0]).startswith(
        "API error: Failed to delete route: code: 1015"
    )
    own = created(other, "own")
    assert refused(
        other, "tunnel", "route", "ip", "add", "--vnet", default_vnet, "10.9.0.0/16", own
    ) == (
        "API error: Failed to add route: code: 1003, reason: Virtual network "
        f"{default_vnet} not found"
    )
    their_vnets = table(other.cli("tunnel", "vnet", "list").stdout, _VNET_HEADER)
    assert [v[1] for v in their_vnets] == ["default"] and their_vnets[0][0] != default_vnet
    # An empty --vnet names no network, even where the account has only one.
    assert refused(other, "tunnel", "route", "ip", "get", "--vnet", "", "10.1.2.3") == (
        "there should only be 1 non-deleted virtual network named"
    )
    # The first account's routes are as they were.
    got = account.cli("tunnel", "route", "ip", "get", "10.1.2.3").stdout
    assert [r[5] for r in table(got, ROUTE_HEADER)] == ["beta"]


_VNET_HEADER = ["ID", "NAME", "IS DEFAULT", "COMMENT", "CREATED", "DELETED"]


def test_argument_errors_exit_1_before_any_request(tmp_path: Path) -> None:
    """Without cert.pem at all: argument mistakes are reported first, as cloudflared does."""

    def fails(*args: str) -> str:
        result = run_cli(list(args), home=tmp_path, check=False)
        assert result.returncode == 1, result
        return result.stderr.strip().splitlines()[-1]

    assert fails("tunnel", "route", "ip", "delete") == (
        "You must supply exactly one argument, the ID or CIDR of the route you want to delete"
    )
    assert fails("tunnel", "route", "ip", "delete", "10.0.0.0") == (
        "You must supply exactly one argument, the ID or CIDR of the route you want to delete"
    )
    assert fails("tunnel", "route", "ip", "get", "a", "b") == (
        "You must supply exactly one argument, an IP whose route will be queried "
        "(e.g. 1.2.3.4 or 2001:0db8:::7334)"
    )
    assert fails("tunnel", "vnet", "add") == (
        "You must supply at least 1 argument, the name of the virtual network you wish to add."
    )
    assert fails("tunnel", "vnet", "update") == (
        "You must supply exactly one argument, either the ID or (current) name of the virtual "
        "network to update"
    )
    assert fails("tunnel", "vnet", "list", "--id", "xyz") == (
        "invalid flags for filtering virtual networks: xyz is not a valid virtual network ID: "
        "invalid UUID length: 3"
    )
