"""``adit tunnel route ip ...`` and ``adit tunnel vnet ...``: private-network routes.

Commands, arguments, flags, messages, tables and exit codes follow cloudflared's
``teamnet_subcommands.go`` and ``vnets_subcommands.go`` (every failure exits 1, as their
errors are plain errors), with ``adit`` for ``cloudflared``. Where adit differs, on purpose:

* a network with host bits set (``10.1.2.3/16``) is refused naming both fixes; cloudflared
  silently routes ``10.1.0.0/16`` (Go's ``net.ParseCIDR`` clears the bits);
* ``--filter-network-is-subset-of`` asks for routes inside the network
  (``network_subset``), as its help says; cloudflared sends it as ``network_superset``, the
  same as ``--filter-network-is-superset-of``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import click
from click.core import ParameterSource

from adit.cli.apiclient import ApiClient, ApiError
from adit.cli.manage import (
    AccountContext,
    _account_options,
    _output_option,
    _parse_time,
    _render,
    _rfc3339,
    _rfc3339_nano,
    _tabulate,
)
from adit.cli.state import CommandFailure
from adit.protocol.cidr import (
    HostBitsSet,
    InvalidNetwork,
    IPNetwork,
    parse_address,
    parse_network,
)

__all__ = ["route_ip", "vnet"]

_NO_CLIENT = "error while creating backend client"
_DELETE_ROUTE_ARGS = (
    "You must supply exactly one argument, the ID or CIDR of the route you want to delete"
)

_vnet_option = click.option(
    "--vnet",
    "--vn",
    "vnet",
    default=None,
    help="The ID or name of the virtual network to which the route is associated to.",
)


def _given(name: str) -> bool:
    """urfave/cli's ``IsSet``: the flag was on the command line (or in its env var)."""
    source = click.get_current_context().get_parameter_source(name)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _go_uuid_error(text: str) -> str:
    """The text of Go's ``uuid.Parse`` error."""
    if len(text) not in (32, 36, 38, 45):
        return f"invalid UUID length: {len(text)}"
    return "invalid UUID format"


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _client(account: AccountContext) -> ApiClient:
    try:
        return account.client()
    except ApiError as exc:
        raise CommandFailure(f"{_NO_CLIENT}: {exc}") from exc


def _network(text: str) -> IPNetwork:
    try:
        return parse_network(text)
    except InvalidNetwork as exc:
        raise CommandFailure(f"Invalid network CIDR: {exc}") from exc


def _vnet_id(account: AccountContext, ref: str) -> uuid.UUID:
    """cloudflared's ``getVnetId``: a UUID, else the one live virtual network of that name."""
    found = _parse_uuid(ref)
    if found is not None:
        return found
    if not ref:  # an empty name filter would list every network, and one would "match"
        raise CommandFailure("there should only be 1 non-deleted virtual network named ")
    try:
        vnets = _client(account).list_vnets({"is_deleted": "false", "name": ref})
    except ApiError as exc:
        raise CommandFailure(str(exc)) from exc
    if len(vnets) != 1:
        raise CommandFailure(f"there should only be 1 non-deleted virtual network named {ref}")
    return uuid.UUID(str(vnets[0].get("id")))


def _chosen_vnet(account: AccountContext, vnet: str | None) -> uuid.UUID | None:
    return _vnet_id(account, vnet or "") if _given("vnet") else None


# -- output -----------------------------------------------------------------------------------


def _route_row(route: dict[str, Any]) -> list[str]:
    """``DetailedRoute.TableString``."""
    deleted = _parse_time(route.get("deleted_at"))
    return [
        str(route.get("id", "")),
        str(route.get("network", "")),
        str(route.get("virtual_network_id") or "default"),
        str(route.get("comment", "")),
        str(route.get("tunnel_id", "")),
        str(route.get("tunnel_name", "")),
        _rfc3339(_parse_time(route.get("created_at"))),
        "-" if deleted is None else _rfc3339(deleted),
    ]


def _print_routes(routes: Sequence[dict[str, Any]]) -> None:
    header = ["ID", "NETWORK", "VIRTUAL NET ID", "COMMENT", "TUNNEL ID", "TUNNEL NAME"]
    for line in _tabulate([[*header, "CREATED", "DELETED"], *map(_route_row, routes)]):
        click.echo(line)


def _route_json(route: dict[str, Any]) -> dict[str, Any]:
    """A ``cfapi.DetailedRoute`` as Go's encoder writes it (``virtual_network_id`` omitted
    when empty, zero times for null)."""
    shown: dict[str, Any] = {"id": route.get("id", ""), "network": route.get("network", "")}
    shown["tunnel_id"] = route.get("tunnel_id", "")
    if route.get("virtual_network_id"):
        shown["virtual_network_id"] = route["virtual_network_id"]
    shown["comment"] = route.get("comment", "")
    shown["created_at"] = _rfc3339_nano(route.get("created_at"))
    shown["deleted_at"] = _rfc3339_nano(route.get("deleted_at"))
    shown["tunnel_name"] = route.get("tunnel_name", "")
    return shown


def _route_yaml(route: dict[str, Any]) -> dict[str, Any]:
    """What Go's yaml.v3 makes of a ``DetailedRoute``: field names lower-cased, and the
    network as the ``net.IPNet`` it is (address text, mask bytes)."""
    try:
        network = parse_network(str(route.get("network", "")))
    except InvalidNetwork:
        cidr: dict[str, Any] = {"ip": None, "mask": None}
    else:
        cidr = {"ip": str(network.network_address), "mask": list(network.netmask.packed)}
    return {
        "id": route.get("id", ""),
        "network": cidr,
        "tunnelid": route.get("tunnel_id", ""),
        "vnetid": route.get("virtual_network_id") or None,
        "comment": route.get("comment", ""),
        "createdat": _rfc3339_nano(route.get("created_at")),
        "deletedat": _rfc3339_nano(route.get("deleted_at")),
        "tunnelname": route.get("tunnel_name", ""),
    }


def _vnet_row(vnet: dict[str, Any]) -> list[str]:
    """``VirtualNetwork.TableString``."""
    deleted = _parse_time(vnet.get("deleted_at"))
    return [
        str(vnet.get("id", "")),
        str(vnet.get("name", "")),
        "true" if vnet.get("is_default_network") else "false",
        str(vnet.get("comment", "")),
        _rfc3339(_parse_time(vnet.get("created_at"))),
        "-" if deleted is None else _rfc3339(deleted),
    ]


def _vnet_json(vnet: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": vnet.get("id", ""),
        "comment": vnet.get("comment", ""),
        "name": vnet.get("name", ""),
        "is_default_network": bool(vnet.get("is_default_network")),
        "created_at": _rfc3339_nano(vnet.get("created_at")),
        "deleted_at": _rfc3339_nano(vnet.get("deleted_at")),
    }


def _vnet_yaml(vnet: dict[str, Any]) -> dict[str, Any]:
    shown = _vnet_json(vnet)
    return {
        "id": shown["id"],
        "comment": shown["comment"],
        "name": shown["name"],
        "isdefault": shown["is_default_network"],
        "createdat": shown["created_at"],
        "deletedat": shown["deleted_at"],
    }


# -- route ip ---------------------------------------------------------------------------------


@click.group("ip")
def route_ip() -> None:
    """Configure and query Cloudflare WARP routing to private IP networks made available
    through Cloudflare Tunnels.

    By default IP routes all exist within a single virtual network. If you use the same IP
    space(s) in different physical private networks, all meant to be reachable via IP routes,
    then you have to manage the ambiguous IP routes by associating them to virtual networks.
    See adit tunnel vnet --help for more information.
    """


@route_ip.command("add")
@_vnet_option
@_account_options
@click.argument("args", nargs=-1, metavar="NETWORK TUNNEL [COMMENT]")
@click.pass_context
def route_ip_add(
    ctx: click.Context,
    vnet: str | None,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Add a new network to the routing table reachable via a Tunnel.

    Usage: adit tunnel route ip add [--vnet ID/name] CIDR TUNNEL [COMMENT]
    """
    if len(args) < 2:
        raise CommandFailure(
            "You must supply at least 2 arguments, first the network you wish to route (in CIDR "
            "form e.g. 1.2.3.4/32) and then the tunnel ID to proxy with"
        )
    network = _network(args[0])
    account = AccountContext(ctx, origincert, api_url)
    try:
        tunnel_id = account.find_id(args[1])
    except ApiError as exc:
        raise CommandFailure(f"Invalid tunnel: {exc}") from exc
    comment = args[2] if len(args) >= 3 else ""
    vnet_id = _chosen_vnet(account, vnet)
    try:
        _client(account).add_route(network.compressed, tunnel_id, comment, vnet_id)
    except ApiError as exc:
        raise CommandFailure(f"API error: {exc}") from exc
    click.echo(f"Successfully added route for {network} over tunnel {tunnel_id}")


def _filter_network(name: str, text: str | None) -> str | None:
    if not _given(name):
        return None
    try:
        return parse_network(text or "").compressed
    except InvalidNetwork as exc:
        raise CommandFailure(f"invalid config for routing filters: {exc}") from exc


def _filter_uuid(flag: str, text: str) -> str | None:
    if not text:
        return None
    if _parse_uuid(text) is None:
        raise CommandFailure(
            f"invalid config for routing filters: Couldn't parse UUID from {flag}: "
            f"{_go_uuid_error(text)}"
        )
    return text


@route_ip.command("show")
@click.option(
    "--filter-is-deleted",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=None,
    help="If false (default), only show non-deleted routes. If true, only show deleted routes.",
)
@click.option("--filter-tunnel-id", default="", help="Show only routes with the given tunnel ID.")
@click.option(
    "--filter-network-is-subset-of",
    "--nsub",
    "subset",
    default=None,
    help="Show only routes whose network is a subset of the given network.",
)
@click.option(
    "--filter-network-is-superset-of",
    "--nsup",
    "superset",
    default=None,
    help="Show only routes whose network is a superset of the given network.",
)
@click.option("--filter-comment-is", default="", help="Show only routes with this comment.")
@click.option(
    "--filter-vnet-id",
    default="",
    help="Show only routes that are attached to the given virtual network ID.",
)
@click.option("--max-fetch-size", type=int, default=0, hidden=True)
@_output_option
@_account_options
@click.pass_context
def route_ip_show(
    ctx: click.Context,
    filter_is_deleted: bool | None,
    filter_tunnel_id: str,
    subset: str | None,
    superset: str | None,
    filter_comment_is: str,
    filter_vnet_id: str,
    max_fetch_size: int,
    output: str,
    origincert: str | None,
    api_url: str | None,
) -> None:
    """Show the routing table.

    Shows your organization private routing table. You can use flags to filter the results.
    """
    query = {"tun_types": "cfd_tunnel", "is_deleted": "true" if filter_is_deleted else "false"}
    for key, value in (
        ("network_subset", _filter_network("subset", subset)),
        ("network_superset", _filter_network("superset", superset)),
        ("comment", filter_comment_is or None),
        ("tunnel_id", _filter_uuid("filter-tunnel-id", filter_tunnel_id)),
        ("virtual_network_id", _filter_uuid("filter-vnet-id", filter_vnet_id)),
        ("per_page", str(max_fetch_size) if max_fetch_size > 0 else None),
    ):
        if value is not None:
            query[key] = value
    account = AccountContext(ctx, origincert, api_url)
    try:
        routes = _client(account).list_routes(query)
    except ApiError as exc:
        raise CommandFailure(str(exc)) from exc
    if output:
        # Go's encoder writes a nil slice (no routes) as null.
        _render(
            output,
            [_route_json(r) for r in routes] or None,
            [_route_yaml(r) for r in routes],
        )
        return
    if routes:
        _print_routes(routes)
    else:
        click.echo(
            "No routes were found for the given filter flags. You can use "
            "'adit tunnel route ip add' to add a route."
        )


route_ip.add_command(route_ip_show, "list")


@route_ip.command("delete")
@_vnet_option
@_account_options
@click.argument("args", nargs=-1, metavar="ROUTE_ID_OR_NETWORK")
@click.pass_context
def route_ip_delete(
    ctx: click.Context,
    vnet: str | None,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Delete a row from your organization's private routing table.

    Usage: adit tunnel route ip delete [--vnet ID/name] ROUTE_ID|CIDR

    That portion of your network will no longer be reachable. --vnet applies to a CIDR.
    """
    if len(args) != 1:
        raise CommandFailure(_DELETE_ROUTE_ARGS)
    account = AccountContext(ctx, origincert, api_url)
    route_id = _parse_uuid(args[0])
    if route_id is None:
        try:
            network = parse_network(args[0])
        except HostBitsSet as exc:  # which route was meant is unclear: name both
            raise CommandFailure(f"Invalid network CIDR: {exc}") from exc
        except InvalidNetwork as exc:
            raise CommandFailure(_DELETE_ROUTE_ARGS) from exc
        vnet_id = _chosen_vnet(account, vnet)
        query = {
            "tun_types": "cfd_tunnel",
            "is_deleted": "false",
            "network_subset": network.compressed,
            "network_superset": network.compressed,
        }
        if vnet_id is not None:
            query["virtual_network_id"] = str(vnet_id)
        try:
            found = _client(account).list_routes(query)
        except ApiError as exc:
            raise CommandFailure(str(exc)) from exc
        if len(found) != 1:
            raise CommandFailure("unable to find route for provided network and vnet")
        route_id = uuid.UUID(str(found[0].get("id")))
    try:
        _client(account).delete_route(route_id)
    except ApiError as exc:
        raise CommandFailure(f"API error: {exc}") from exc
    click.echo(f"Successfully deleted route with ID {route_id}")


@route_ip.command("get")
@_vnet_option
@_account_options
@click.argument("args", nargs=-1, metavar="IP")
@click.pass_context
def route_ip_get(
    ctx: click.Context,
    vnet: str | None,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Check which row of the routing table matches a given IP.

    Usage: adit tunnel route ip get [--vnet ID/name] IP

    If you use virtual networks, tell which virtual network's routing table to use.
    """
    if len(args) != 1:
        raise CommandFailure(
            "You must supply exactly one argument, an IP whose route will be queried "
            "(e.g. 1.2.3.4 or 2001:0db8:::7334)"
        )
    try:
        ip = parse_address(args[0])
    except ValueError as exc:
        raise CommandFailure(f"Invalid IP {args[0]}") from exc
    account = AccountContext(ctx, origincert, api_url)
    vnet_id = _chosen_vnet(account, vnet)
    try:
        route = _client(account).get_route_by_ip(str(ip), vnet_id)
    except ApiError as exc:
        raise CommandFailure(f"API error: {exc}") from exc
    if route is None or not route.get("tunnel_id"):
        click.echo(f"No route matches the IP {ip}")
    else:
        _print_routes([route])


# -- vnet -------------------------------------------------------------------------------------


@click.group("vnet")
def vnet() -> None:
    """Configure and query virtual networks to manage private IP routes with overlapping IPs.

    By default, all IP routes (see adit tunnel route ip) live in the same virtual network.
    When private networks behind different tunnels use the same IP space (say 10.0.0.0/8),
    add each one's routes to a virtual network of its own.
    """


_default_flag = click.option(
    "--default",
    "-d",
    "make_default",
    is_flag=True,
    help="The virtual network becomes the default one for the account: operations that omit a "
    "virtual network (such as new IP routes) use it.",
)


@vnet.command("add")
@_default_flag
@_account_options
@click.argument("args", nargs=-1, metavar="NAME [COMMENT]")
@click.pass_context
def vnet_add(
    ctx: click.Context,
    make_default: bool,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Add a new virtual network to which IP routes can be attached."""
    if not args:
        raise CommandFailure(
            "You must supply at least 1 argument, the name of the virtual network you wish to add."
        )
    name = args[0]
    comment = args[1] if len(args) >= 2 else ""
    account = AccountContext(ctx, origincert, api_url)
    try:
        created = _client(account).create_vnet(name, comment, make_default)
    except (ApiError, CommandFailure) as exc:
        detail = exc.message if isinstance(exc, CommandFailure) else str(exc)
        raise CommandFailure(f"Could not add virtual network: {detail}") from exc
    extra = " (as the new default for this account) " if created.get("is_default_network") else ""
    click.echo(
        f"Successfully added virtual 'network' {name} with ID: {created.get('id', '')}{extra}\n"
        "You can now add IP routes attached to this virtual network. "
        "See `adit tunnel route ip add --help`"
    )


@vnet.command("list")
@click.option("--id", "vnet_id", default="", help="List virtual networks with the given ID")
@click.option("--name", default="", help="List virtual networks with the given NAME")
@click.option(
    "--is-default",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=None,
    help="If true, lists the virtual network that is the default one. If false, lists all "
    "non-default virtual networks for the account. If absent, all are included in the results "
    "regardless of their default status.",
)
@click.option(
    "--show-deleted",
    is_flag=True,
    help="If false (default), only show non-deleted virtual networks. If true, only show "
    "deleted virtual networks.",
)
@click.option("--max-fetch-size", type=int, default=0, hidden=True)
@_output_option
@_account_options
@click.pass_context
def vnet_list(
    ctx: click.Context,
    vnet_id: str,
    name: str,
    is_default: bool | None,
    show_deleted: bool,
    max_fetch_size: int,
    output: str,
    origincert: str | None,
    api_url: str | None,
) -> None:
    """Lists the virtual networks based on the given filter flags."""
    query: dict[str, str] = {}
    if vnet_id:
        if _parse_uuid(vnet_id) is None:
            raise CommandFailure(
                "invalid flags for filtering virtual networks: "
                f"{vnet_id} is not a valid virtual network ID: {_go_uuid_error(vnet_id)}"
            )
        query["id"] = vnet_id
    if name:
        query["name"] = name
    if is_default is not None:
        query["is_default"] = "true" if is_default else "false"
    query["is_deleted"] = "true" if show_deleted else "false"
    if max_fetch_size > 0:
        query["per_page"] = str(max_fetch_size)
    account = AccountContext(ctx, origincert, api_url)
    try:
        vnets = _client(account).list_vnets(query)
    except ApiError as exc:
        raise CommandFailure(str(exc)) from exc
    if output:
        _render(output, [_vnet_json(v) for v in vnets], [_vnet_yaml(v) for v in vnets])
        return
    if not vnets:
        click.echo(
            "No virtual networks were found for the given filter flags. You can use "
            "'adit tunnel vnet add' to add a virtual network."
        )
        return
    rows = [["ID", "NAME", "IS DEFAULT", "COMMENT", "CREATED", "DELETED"]]
    for line in _tabulate(rows + [_vnet_row(v) for v in vnets]):
        click.echo(line)


@vnet.command("delete")
@click.option(
    "--force",
    "-f",
    is_flag=True,
    help="Force the deletion of the virtual network even if it is being relied upon by other "
    "resources. Those resources will be deleted (e.g. IP Routes).",
)
@_account_options
@click.argument("args", nargs=-1, metavar="VNET")
@click.pass_context
def vnet_delete(
    ctx: click.Context,
    force: bool,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Delete a virtual network (given its ID or name).

    Usage: adit tunnel vnet delete [-f] VIRTUAL_NETWORK

    Only possible if no IP route uses it, unless --force.
    """
    if not args:
        raise CommandFailure(
            "You must supply exactly one argument, either the ID or name of the virtual network "
            "to delete"
        )
    ref = args[0]
    account = AccountContext(ctx, origincert, api_url)
    vnet_id = _vnet_id(account, ref)
    try:
        _client(account).delete_vnet(vnet_id, force)
    except ApiError as exc:
        raise CommandFailure(f"API error: {exc}") from exc
    click.echo(f"Successfully deleted virtual network '{ref}'")


@vnet.command("update")
@click.option(
    "--name", "-n", "new_name", default=None, help="The new name for the virtual network."
)
@click.option(
    "--comment",
    "-c",
    "new_comment",
    default=None,
    help="A new comment describing the purpose of the virtual network.",
)
@_default_flag
@_account_options
@click.argument("args", nargs=-1, metavar="VNET")
@click.pass_context
def vnet_update(
    ctx: click.Context,
    new_name: str | None,
    new_comment: str | None,
    make_default: bool,
    origincert: str | None,
    api_url: str | None,
    args: tuple[str, ...],
) -> None:
    """Update a virtual network (given its ID or name).

    Usage: adit tunnel vnet update [-n NAME] [-c COMMENT] [-d] VIRTUAL_NETWORK

    Making it the default makes the previous default no longer the default; a default cannot
    be unset directly: make another virtual network the default instead.
    """
    if len(args) != 1:
        raise CommandFailure(
            " You must supply exactly one argument, either the ID or (current) name of the "
            "virtual network to update"
        )
    ref = args[0]
    account = AccountContext(ctx, origincert, api_url)
    vnet_id = _vnet_id(account, ref)
    updates: dict[str, object] = {}
    if _given("new_name"):
        updates["name"] = new_name or ""
    if _given("new_comment"):
        updates["comment"] = new_comment or ""
    if _given("make_default"):
        updates["is_default_network"] = make_default
    try:
        _client(account).update_vnet(vnet_id, updates)
    except ApiError as exc:
        raise CommandFailure(f"API error: {exc}") from exc
    click.echo(f"Successfully updated virtual network '{ref}'")
