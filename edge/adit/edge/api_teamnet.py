"""The management API's private-network endpoints: ``/accounts/{a}/teamnet/...``.

Cloudflare's paths and shapes, as cloudflared's ``cfapi/ip_route.go`` and
``cfapi/virtual_network.go`` call them:

* ``GET|POST routes``: list (filters ``is_deleted``, ``tunnel_id``, ``virtual_network_id``,
  ``comment``, ``network_subset``, ``network_superset``, ``route_id``, ``existed_at``,
  ``tun_types``; paginated), create (``network``, ``tunnel_id``, ``comment``,
  ``virtual_network_id``);
* ``GET|DELETE routes/{route_id}``;
* ``GET routes/ip/{ip}[?virtual_network_id=]``: the route that serves an IP, ``null`` when
  none does (cloudflared prints "No route matches the IP");
* ``POST|DELETE routes/network/{cidr}`` (URL-encoded): Cloudflare's older calls by network;
* ``GET|POST virtual_networks``, ``GET|PATCH|DELETE virtual_networks/{id}[?force=true]``.

The caller's account was authenticated and matched to the path by :mod:`adit.edge.api`; store
refusals (:class:`~adit.edge.errors.StoreError`) are turned into statuses and codes there.
Writes run off the event loop (``Store.off_loop``).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import unquote

from adit.edge.api_json import envelope, ip_route_json, virtual_network_json
from adit.edge.api_request import (
    BAD_REQUEST,
    NOT_FOUND,
    ApiError,
    Response,
    json_object,
    json_response,
    page_of,
    parse_bool,
    parse_existed_at,
    parse_uuid,
)
from adit.edge.errors import NetworkRefused
from adit.edge.store import IpRoute, Store
from adit.protocol.cidr import InvalidNetwork, IPNetwork, parse_address, parse_network

__all__ = ["TeamnetApi"]

_METHOD_NOT_ALLOWED = 10405
_NOT_ROUTABLE = 7003


def _ok(result: object, result_info: dict[str, int] | None = None) -> Response:
    return json_response(200, envelope(result, result_info))


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(405, _METHOD_NOT_ALLOWED, "Method not allowed")


def _string(req: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = req.get(key)
    if value is None:
        if required:
            raise ApiError(400, BAD_REQUEST, f"{key} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(400, BAD_REQUEST, f"{key} must be a string")
    return value


def _flag(req: dict[str, Any], *keys: str) -> bool | None:
    """The first of ``keys`` present (Cloudflare spells the default flag two ways)."""
    for key in keys:
        value = req.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise ApiError(400, BAD_REQUEST, f"{key} must be true or false")
        return value
    return None


def _optional_uuid(text: str | None, what: str) -> uuid.UUID | None:
    return parse_uuid(text, what) if text else None


def _network_filter(query: dict[str, str], name: str) -> IPNetwork | None:
    text = query.get(name)
    if not text:
        return None
    try:
        return parse_network(text)
    except InvalidNetwork as exc:
        raise NetworkRefused(f"{name}: {exc}") from None


class TeamnetApi:
    """IP routes and virtual networks of the authenticated account."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._private = store.private

    async def dispatch(
        self,
        method: str,
        account: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
    ) -> Response:
        """Answer ``/accounts/{account}/teamnet/{rest...}``."""
        if rest[:1] == ["routes"]:
            return await self._routes(method, account, rest[1:], query, body)
        if rest[:1] == ["virtual_networks"]:
            return await self._vnets(method, account, rest[1:], query, body)
        raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")

    # -- IP routes ------------------------------------------------------------------------

    async def _routes(
        self,
        method: str,
        account: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
    ) -> Response:
        if not rest:
            if method == "GET":
                return self._list_routes(account, query)
            _allow(method, "POST")
            req = json_object(body)
            network = _string(req, "network", required=True)
            assert network is not None
            return await self._create_route(account, network, req)
        if rest[0] == "ip" and len(rest) == 2:
            _allow(method, "GET")
            return self._route_for_ip(account, unquote(rest[1]), query)
        if rest[0] == "network" and len(rest) >= 2:
            # The CIDR comes URL-encoded (10.0.0.0%2F8); a client that did not encode it
            # splits it into two segments.
            network = unquote("/".join(rest[1:]))
            _allow(method, "POST", "DELETE")
            if method == "POST":
                return await self._create_route(account, network, json_object(body))
            vnet_id = _optional_uuid(query.get("virtual_network_id"), "virtual_network_id")
            deleted = await self._store.off_loop(
                self._private.delete_route_by_network, account, network, vnet_id
            )
            return _ok(ip_route_json(deleted))
        if len(rest) == 1:
            route_id = parse_uuid(rest[0], "route ID")
            _allow(method, "GET", "DELETE")
            if method == "GET":
                route = self._private.get_route(account, route_id)
                if route is None:
                    raise ApiError(404, NOT_FOUND, f"Route {route_id} not found")
                return _ok(ip_route_json(route, detailed=True))
            deleted = await self._store.off_loop(self._private.delete_route, account, route_id)
            return _ok(ip_route_json(deleted))
        raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")

    async def _create_route(self, account: str, network: str, req: dict[str, Any]) -> Response:
        tunnel = _string(req, "tunnel_id", required=True)
        assert tunnel is not None
        tunnel_id = parse_uuid(tunnel, "tunnel_id")
        vnet_id = _optional_uuid(_string(req, "virtual_network_id"), "virtual_network_id")
        route: IpRoute = await self._store.off_loop(
            self._private.add_route,
            account,
            network,
            tunnel_id,
            comment=_string(req, "comment") or "",
            vnet_id=vnet_id,
        )
        return _ok(ip_route_json(route))

    def _list_routes(self, account: str, query: dict[str, str]) -> Response:
        tun_types = query.get("tun_types")
        is_deleted = query.get("is_deleted")
        routes = self._private.list_routes(
            account,
            is_deleted=parse_bool(is_deleted, "is_deleted") if is_deleted else None,
            tunnel_id=_optional_uuid(query.get("tunnel_id"), "tunnel_id"),
            vnet_id=_optional_uuid(query.get("virtual_network_id"), "virtual_network_id"),
            comment=query.get("comment") or None,
            route_id=_optional_uuid(query.get("route_id"), "route_id"),
            network_subset=_network_filter(query, "network_subset"),
            network_superset=_network_filter(query, "network_superset"),
            existed_at=parse_existed_at(query),
        )
        if tun_types and "cfd_tunnel" not in tun_types.split(","):
            routes = []  # every route of adit's goes through a cloudflared tunnel
        chunk, info = page_of(query, routes)
        return _ok([ip_route_json(r, detailed=True) for r in chunk], info)

    def _route_for_ip(self, account: str, text: str, query: dict[str, str]) -> Response:
        try:
            ip = parse_address(text)
        except ValueError:
            raise ApiError(400, BAD_REQUEST, f"{text} is not a valid IP address") from None
        vnet_id = _optional_uuid(query.get("virtual_network_id"), "virtual_network_id")
        route = self._private.route_for_ip(account, ip, vnet_id)
        return _ok(None if route is None else ip_route_json(route, detailed=True))

    # -- virtual networks -----------------------------------------------------------------

    async def _vnets(
        self,
        method: str,
        account: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
    ) -> Response:
        if not rest:
            if method == "GET":
                return await self._list_vnets(account, query)
            _allow(method, "POST")
            req = json_object(body)
            name = _string(req, "name", required=True)
            assert name is not None
            vnet = await self._store.off_loop(
                self._private.create_vnet,
                account,
                name,
                _string(req, "comment") or "",
                is_default=_flag(req, "is_default_network", "is_default") or False,
            )
            return _ok(virtual_network_json(vnet))
        if len(rest) != 1:
            raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")
        vnet_id = parse_uuid(rest[0], "virtual network ID")
        _allow(method, "GET", "PATCH", "DELETE")
        if method == "GET":
            found = self._private.get_vnet(account, vnet_id)
            if found is None:
                raise ApiError(404, NOT_FOUND, f"Virtual network {vnet_id} not found")
            return _ok(virtual_network_json(found))
        if method == "DELETE":
            force = parse_bool(query["force"], "force") if query.get("force") else False
            deleted = await self._store.off_loop(
                self._private.delete_vnet, account, vnet_id, force=force
            )
            return _ok(virtual_network_json(deleted))
        req = json_object(body)
        updated = await self._store.off_loop(
            self._private.update_vnet,
            account,
            vnet_id,
            name=_string(req, "name"),
            comment=_string(req, "comment"),
            is_default=_flag(req, "is_default_network", "is_default"),
        )
        return _ok(virtual_network_json(updated))

    async def _list_vnets(self, account: str, query: dict[str, str]) -> Response:
        if self._private.default_vnet_id(account) is None:
            # Cloudflare's accounts always show their default network: made on first sight.
            await self._store.off_loop(self._private.default_vnet, account)
        is_default = query.get("is_default")
        is_deleted = query.get("is_deleted")
        vnets = self._private.list_vnets(
            account,
            vnet_id=_optional_uuid(query.get("id"), "id"),
            name=query.get("name") or None,
            is_default=parse_bool(is_default, "is_default") if is_default else None,
            is_deleted=parse_bool(is_deleted, "is_deleted") if is_deleted else None,
        )
        return _ok([virtual_network_json(v) for v in vnets])
