"""The management API: cloudflared's REST paths and v4 envelope, served by ``adit edge``.

Pure request → response (no sockets): the edge's HTTPS listener calls ``ManagementApi.handle``.
Paths are accepted with or without Cloudflare's ``/client/v4`` prefix, so ``--api-url`` may be
``https://edge:port`` or ``https://edge:port/client/v4``; the real cloudflared CLI works too.
Tunnels and hostname routes are answered here, private-network routes and virtual networks
(``/accounts/{a}/teamnet/...``) by :mod:`adit.edge.api_teamnet`.

Authorisation: every path except ``/adit/v1/ca.pem`` needs ``Authorization: Bearer <token>``; a
token acts for exactly one account, and any path naming another account or zone is refused
before a lookup happens.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from adit.credentials import TunnelCredentials, encode_tunnel_token
from adit.edge.access.api import AccessApi
from adit.edge.access.store import AccessConflict, AccessNotFound, InvalidAccessSetup
from adit.edge.api_configs import TunnelConfigApi
from adit.edge.api_json import active_clients_json, envelope, error_envelope, tunnel_json
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
from adit.edge.api_teamnet import TeamnetApi
from adit.edge.errors import DnsUpdateFailed
from adit.edge.management_token import RESOURCES, ManagementSigner
from adit.edge.registry import ConnectionRegistry
from adit.edge.route_dns import PublishedEdge, RouteRecords
from adit.edge.store import (
    AccountNotFound,
    HostnameConflict,
    HostnameNotRouted,
    HostnameOutsideZones,
    HostnameRefused,
    HostnameTaken,
    InvalidName,
    IpRouteConflict,
    IpRouteNotFound,
    NetworkRefused,
    Store,
    StoreBusy,
    StoreError,
    Tunnel,
    TunnelDeleted,
    TunnelHasRoutes,
    TunnelNameConflict,
    TunnelNotFound,
    VirtualNetworkInUse,
    VirtualNetworkIsDefault,
    VirtualNetworkNameConflict,
    VirtualNetworkNotFound,
    WeakSecret,
)

log = logging.getLogger("adit.edge.api")

__all__ = ["MAX_BODY", "EdgeInfo", "ManagementApi", "Response"]

#: Request bodies are tiny JSON documents; anything bigger is refused unread by the listener.
MAX_BODY = 1 << 20

_PREFIX = "/client/v4"
#: How long the previous tunnel secret stays valid after ``rotate`` unless finished earlier.
DEFAULT_ROTATION_DEADLINE = 3600
MAX_ROTATION_DEADLINE = 30 * 24 * 3600

# Cloudflare's error codes where one exists; the CLI prints them as ``code: N, reason: msg``.
_AUTH_ERROR = 10000
_NOT_ROUTABLE = 7003
_METHOD_NOT_ALLOWED = 10405
_NAME_CONFLICT = 1013
_ACTIVE_CONNECTIONS = 1022
_ROUTE_CONFLICT = 1053
_DNS_VALIDATION = 1004  # Cloudflare's "DNS Validation Error"
_NO_ZONE_ACCESS = 9109  # Cloudflare's "Unauthorized to access requested resource"
_INTERNAL = 10001
_UNAVAILABLE = 10013
_IP_ROUTE_CONFLICT = 1014  # "You already have a route defined for this exact IP subnet"
_IP_ROUTE_NOT_FOUND = 1015  # "... modify the route for a network that isn't routed ..."
_HAS_DEPENDENCIES = 1023  # "Cannot delete tunnel because it has Warp routing configured"

#: How each refusal of the store reaches the caller: HTTP status and Cloudflare code; the
#: message is the error's own.
_STORE_ERRORS: dict[type[StoreError], tuple[int, int]] = {
    StoreBusy: (503, _UNAVAILABLE),
    AccountNotFound: (404, NOT_FOUND),
    TunnelNotFound: (404, NOT_FOUND),
    TunnelDeleted: (400, NOT_FOUND),
    TunnelNameConflict: (409, _NAME_CONFLICT),
    InvalidName: (400, BAD_REQUEST),
    WeakSecret: (400, BAD_REQUEST),
    HostnameConflict: (409, _ROUTE_CONFLICT),
    HostnameTaken: (409, _ROUTE_CONFLICT),
    HostnameRefused: (400, _DNS_VALIDATION),
    HostnameNotRouted: (404, NOT_FOUND),
    # adit's choice: the zone's DNS server (RFC 2136) failed or refused; the message says which.
    DnsUpdateFailed: (502, _UNAVAILABLE),
    HostnameOutsideZones: (403, _NO_ZONE_ACCESS),
    TunnelHasRoutes: (400, _HAS_DEPENDENCIES),
    NetworkRefused: (400, BAD_REQUEST),
    IpRouteConflict: (409, _IP_ROUTE_CONFLICT),
    IpRouteNotFound: (404, _IP_ROUTE_NOT_FOUND),
    VirtualNetworkNotFound: (404, NOT_FOUND),
    VirtualNetworkNameConflict: (409, _NAME_CONFLICT),
    # adit's choices: Cloudflare's codes for these are not documented.
    VirtualNetworkInUse: (400, _HAS_DEPENDENCIES),
    VirtualNetworkIsDefault: (400, BAD_REQUEST),
    AccessNotFound: (404, NOT_FOUND),
    AccessConflict: (409, _NAME_CONFLICT),
    InvalidAccessSetup: (400, BAD_REQUEST),
}


@dataclass(frozen=True)
class EdgeInfo:
    """What the API tells clients about the edge itself."""

    #: Tunnel listener addresses (``host:port``) connectors should dial.
    tunnel_addresses: tuple[str, ...]
    #: PEM of the edge CA (connectors' ``--cacert``).
    ca_pem: str
    #: Region/endpoint stamped into credentials (empty: none).
    endpoint: str = ""


def _store_error(exc: StoreError) -> ApiError:
    status, code = next(
        (answer for kind, answer in _STORE_ERRORS.items() if isinstance(exc, kind)),
        (400, BAD_REQUEST),
    )
    return ApiError(status, code, str(exc))


class ManagementApi:
    """cloudflared's tunnel management endpoints over the edge's store and registry."""

    def __init__(
        self,
        store: Store,
        registry: ConnectionRegistry,
        edge_info: EdgeInfo,
        *,
        management_signer: ManagementSigner | None = None,
        certificate_status: Callable[[str], dict[str, Any]] | None = None,
        published: PublishedEdge | None = None,
    ) -> None:
        self._store = store
        #: A hostname's public certificate status (:mod:`adit.edge.certificates`); None: the
        #: edge has no HTTPS listener with ACME or certificate files.
        self._certificate_status = certificate_status
        #: Routes with their DNS records in the zones' servers (:mod:`adit.edge.route_dns`).
        self._records = RouteRecords(store, published or PublishedEdge())
        self._registry = registry
        self._edge = edge_info
        #: Signs ``tail``'s management tokens (None: this API issues none).
        self._management = management_signer
        self._teamnet = TeamnetApi(store)
        self._configs = TunnelConfigApi(store, registry)
        self._access = AccessApi(store.access)

    async def handle(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        """Answer one request; never raises, whatever the request (a bug of ours is a 500)."""
        try:
            return await self._dispatch(method.upper(), target, headers, body)
        except ApiError as exc:
            return json_response(exc.status, error_envelope(exc.code, exc.message))
        except StoreError as exc:
            error = _store_error(exc)
            return json_response(error.status, error_envelope(error.code, error.message))
        except Exception:
            log.exception("management API request failed: %s %s", method, target[:200])
            return json_response(500, error_envelope(_INTERNAL, "Internal error"))

    # -- dispatch -------------------------------------------------------------------------

    async def _dispatch(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        if len(body) > MAX_BODY:
            raise ApiError(413, BAD_REQUEST, "request body too large")
        parts = urlsplit(target)
        path = parts.path
        if path.startswith(_PREFIX + "/"):
            path = path[len(_PREFIX) :]
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segments = [s for s in path.split("/") if s]

        if segments == ["adit", "v1", "ca.pem"]:
            self._allow(method, "GET")
            return 200, [(b"content-type", b"application/x-pem-file")], self._edge.ca_pem.encode()

        account = self.authenticate(headers)
        if segments == ["adit", "v1", "edge"]:
            self._allow(method, "GET")
            return self._ok(
                {
                    "account_tag": account,
                    "tunnel_addresses": list(self._edge.tunnel_addresses),
                    "ca_pem": self._edge.ca_pem,
                    "endpoint": self._edge.endpoint,
                }
            )
        if segments == ["adit", "v1", "certificates"]:
            # The public HTTPS certificate of each of the account's routed hostnames.
            self._allow(method, "GET")
            status = self._certificate_status
            return self._ok(
                [
                    {
                        **(
                            status(host)
                            if status is not None
                            else {"hostname": host, "source": None}
                        ),
                        # Which tunnel routes it (``adit tunnel info`` shows its own names).
                        "tunnel_id": str(tunnel),
                    }
                    for host, tunnel in self._store.routes(account)
                ]
            )
        if len(segments) >= 3 and segments[0] == "accounts" and segments[2] == "cfd_tunnel":
            self._same_account(account, segments[1])
            return await self._tunnels(method, account, segments[3:], query, body)
        if len(segments) >= 4 and segments[0] == "accounts" and segments[2] == "teamnet":
            self._same_account(account, segments[1])
            return await self._teamnet.dispatch(method, account, segments[3:], query, body)
        if len(segments) >= 4 and segments[0] == "accounts" and segments[2] == "access":
            self._same_account(account, segments[1])
            return await self._access.dispatch(method, account, segments[3:], query, body)
        if (
            len(segments) == 5
            and segments[0] == "zones"
            and segments[2] == "tunnels"
            and segments[4] == "routes"
        ):
            # The account is the zone (cert.pem's zoneID is the account tag).
            self._same_account(account, segments[1])
            self._allow(method, "PUT", "DELETE")
            tunnel_id = parse_uuid(segments[3], "tunnel ID")
            if method == "DELETE":
                return await self._unroute(account, tunnel_id, body)
            return await self._route(account, tunnel_id, body)
        raise ApiError(
            404,
            _NOT_ROUTABLE,
            f"Could not route to {path}, perhaps your object identifier is invalid?",
        )

    async def _tunnels(
        self,
        method: str,
        account: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
    ) -> Response:
        if not rest:
            if method == "GET":
                return self._list(account, query)
            self._allow(method, "POST")
            return await self._create(account, body)
        tunnel_id = parse_uuid(rest[0], "tunnel ID")
        if len(rest) == 1:
            if method == "GET":
                return self._ok(self._tunnel_json(self._get(account, tunnel_id)))
            self._allow(method, "DELETE")
            return await self._delete(account, tunnel_id, query)
        if rest[1:] == ["connections"]:
            tunnel = self._get(account, tunnel_id)
            if method == "GET":
                return self._ok(active_clients_json(self._registry.connections(tunnel.id)))
            self._allow(method, "DELETE")
            client_id = query.get("client_id")
            self._registry.disconnect(
                tunnel.id, parse_uuid(client_id, "client_id") if client_id else None
            )
            return self._ok(None)
        if rest[1:] == ["configurations"]:
            return await self._configs.dispatch(method, account, tunnel_id, body)
        if rest[1:] == ["rotate"]:
            self._allow(method, "POST")
            return await self._rotate(account, tunnel_id, body)
        if rest[1:] == ["rotate", "finish"]:
            self._allow(method, "POST")
            tunnel = self._get(account, tunnel_id)
            finished = await self._store.off_loop(self._store.finish_rotation, tunnel.id)
            self._registry.revalidate(tunnel.id)  # the previous secret's connections go now
            return self._ok({"id": str(tunnel.id), "finished": finished})
        if rest[1:] == ["token"]:
            self._allow(method, "GET")
            tunnel = self._get(account, tunnel_id)
            if tunnel.deleted_at is not None:
                raise ApiError(400, NOT_FOUND, f"Tunnel {tunnel.id} has been deleted")
            return self._ok(self._token(tunnel))
        if len(rest) == 3 and rest[1] == "management" and rest[2] in RESOURCES:
            self._allow(method, "POST")
            return self._management_token(account, self._get(account, tunnel_id), rest[2])
        raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(405, _METHOD_NOT_ALLOWED, "Method not allowed")

    @staticmethod
    def _ok(result: object, result_info: dict[str, int] | None = None) -> Response:
        return json_response(200, envelope(result, result_info))

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The account a request's bearer token acts for; :class:`ApiError` 401 without one
        (the private flow endpoints ask too)."""
        for name, value in headers:
            if name.lower() != b"authorization":
                continue
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                account = self._store.authenticate(credentials.strip())
                if account is not None:
                    return account
        raise ApiError(401, _AUTH_ERROR, "Authentication error")

    @staticmethod
    def _same_account(account: str, named: str) -> None:
        if named != account:
            raise ApiError(403, _AUTH_ERROR, "Authentication error")

    def _get(self, account: str, tunnel_id: uuid.UUID) -> Tunnel:
        tunnel = self._store.get_tunnel(account, tunnel_id)
        if tunnel is None:
            raise ApiError(404, NOT_FOUND, f"Tunnel {tunnel_id} not found")
        return tunnel

    def _tunnel_json(self, tunnel: Tunnel, token: str | None = None) -> dict[str, Any]:
        return tunnel_json(tunnel, self._registry.connections(tunnel.id), token)

    def _token(self, tunnel: Tunnel) -> str:
        creds = TunnelCredentials(
            account_tag=tunnel.account_tag,
            tunnel_secret=tunnel.secret,
            tunnel_id=tunnel.id,
            endpoint=self._edge.endpoint,
            edge=self._edge.tunnel_addresses,
            edge_ca_pem=self._edge.ca_pem,
        )
        return encode_tunnel_token(creds)

    # -- endpoints ------------------------------------------------------------------------

    def _management_token(self, account: str, tunnel: Tunnel, resource: str) -> Response:
        """A short-lived management token for ``tail`` and host details (cloudflared's
        ``GetManagementToken``): the result is the JWT itself."""
        if self._management is None:
            raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")
        if tunnel.deleted_at is not None:
            raise ApiError(400, NOT_FOUND, f"Tunnel {tunnel.id} has been deleted")
        token = self._management.issue(
            tunnel_id=tunnel.id,
            account_tag=tunnel.account_tag,
            # Who asked; cloudflared lets one actor's new log stream take over its old one.
            actor_id=f"account:{account}",
            resource=resource,
        )
        return self._ok(token)

    async def _create(self, account: str, body: bytes) -> Response:
        req = json_object(body)
        name = req.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, BAD_REQUEST, "tunnel name required")
        try:
            uuid.UUID(name)
        except ValueError:
            pass
        else:
            raise ApiError(400, BAD_REQUEST, "you cannot use UUIDs as tunnel names")
        if len(name) > 255:
            raise ApiError(400, BAD_REQUEST, "tunnel name must be at most 255 characters")
        secret: bytes | None = None
        raw_secret = req.get("tunnel_secret")
        if raw_secret is not None:
            if not isinstance(raw_secret, str):
                raise ApiError(400, BAD_REQUEST, "tunnel_secret must be a base64 string")
            try:
                secret = base64.b64decode(raw_secret, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, BAD_REQUEST, "tunnel_secret must be base64") from None
        remote = req.get("config_src") == "cloudflare"
        try:
            tunnel = await self._store.off_loop(
                self._store.create_tunnel, account, name, secret, remote_config=remote
            )
        except TunnelNameConflict:
            raise ApiError(409, _NAME_CONFLICT, "A tunnel with this name already exists") from None
        return self._ok(self._tunnel_json(tunnel, token=self._token(tunnel)))

    def _list(self, account: str, query: dict[str, str]) -> Response:
        is_deleted = query.get("is_deleted")
        tunnel_uuid = query.get("uuid")
        tunnels = self._store.list_tunnels(
            account,
            name=query.get("name") or None,
            name_prefix=query.get("name_prefix") or None,
            exclude_prefix=query.get("exclude_prefix") or None,
            is_deleted=parse_bool(is_deleted, "is_deleted") if is_deleted else None,
            tunnel_id=parse_uuid(tunnel_uuid, "uuid") if tunnel_uuid else None,
            existed_at=parse_existed_at(query),
        )
        chunk, info = page_of(query, tunnels)
        return self._ok([self._tunnel_json(t) for t in chunk], info)

    async def _delete(self, account: str, tunnel_id: uuid.UUID, query: dict[str, str]) -> Response:
        tunnel = self._get(account, tunnel_id)
        if tunnel.deleted_at is not None:
            raise ApiError(400, NOT_FOUND, f"Tunnel {tunnel.id} has already been deleted")
        cascade = parse_bool(query["cascade"], "cascade") if query.get("cascade") else False
        if self._registry.connections(tunnel.id):
            if not cascade:
                # No `tunnel cleanup` here: it closes the connections, but running connectors
                # dial again at once, so the next delete is refused the same way.
                raise ApiError(
                    400,
                    _ACTIVE_CONNECTIONS,
                    "Cannot delete tunnel because it has active connections. Stop its "
                    "connectors first, or delete it and close its connections with "
                    f"`adit tunnel delete -f {shlex.quote(tunnel.name)}`",
                )
            self._registry.disconnect(tunnel.id)
        hostnames = self._store.tunnel_hostnames(account, tunnel.id)
        try:
            deleted = await self._store.off_loop(
                self._store.delete_tunnel, account, tunnel.id, cascade=cascade
            )
        except TunnelNotFound:
            raise ApiError(404, NOT_FOUND, f"Tunnel {tunnel_id} not found") from None
        except TunnelDeleted as exc:
            raise ApiError(400, NOT_FOUND, str(exc)) from None
        self._registry.revalidate(tunnel.id)  # one that registered meanwhile goes too
        # The tunnel is gone whatever the DNS servers say; a record left behind is logged.
        await self._records.forget(hostnames)
        return self._ok(self._tunnel_json(deleted))

    async def _rotate(self, account: str, tunnel_id: uuid.UUID, body: bytes) -> Response:
        """adit's secret rotation: a new secret now, the old one accepted until the deadline
        (or until every connection re-registered with the new one, or ``rotate/finish``)."""
        req = json_object(body)
        deadline = req.get("deadline_seconds", DEFAULT_ROTATION_DEADLINE)
        if (
            not isinstance(deadline, int | float)
            or isinstance(deadline, bool)
            or not 0 <= deadline <= MAX_ROTATION_DEADLINE
        ):
            raise ApiError(
                400,
                BAD_REQUEST,
                f"deadline_seconds must be a number from 0 to {MAX_ROTATION_DEADLINE}",
            )
        try:
            tunnel, rotation = await self._store.off_loop(
                self._store.rotate_tunnel_secret,
                account,
                tunnel_id,
                datetime.timedelta(seconds=deadline),
            )
        except TunnelNotFound:
            raise ApiError(404, NOT_FOUND, f"Tunnel {tunnel_id} not found") from None
        except TunnelDeleted as exc:
            raise ApiError(400, NOT_FOUND, str(exc)) from None
        # Connections on the secret now rotated out learn when its window ends; a rotation
        # during a window drops the oldest secret, and its connections, at once.
        self._registry.revalidate(tunnel.id)
        return self._ok(
            {
                "id": str(tunnel.id),
                "name": tunnel.name,
                "token": self._token(tunnel),
                "previous_secret_expires_at": rotation.expires_at.isoformat().replace(
                    "+00:00", "Z"
                ),
            }
        )

    async def _route(self, account: str, tunnel_id: uuid.UUID, body: bytes) -> Response:
        req = json_object(body)
        route_type = req.get("type")
        if route_type == "lb":
            raise ApiError(400, BAD_REQUEST, "load balancer routes are not supported by adit")
        if route_type != "dns":
            raise ApiError(400, BAD_REQUEST, f"unknown route type {route_type!r}")
        hostname = req.get("user_hostname")
        if not isinstance(hostname, str):
            raise ApiError(400, BAD_REQUEST, f"{hostname} is not a valid hostname")
        overwrite = req.get("overwrite_existing") is True
        try:
            result, record_types = await self._records.route(
                account, tunnel_id, hostname, overwrite=overwrite
            )
        except TunnelNotFound:
            raise ApiError(404, NOT_FOUND, f"Tunnel {tunnel_id} not found") from None
        answer: dict[str, object] = {"cname": str(result.change), "name": result.hostname}
        if record_types:
            # adit's: the DNS record types written in the zone's server (A/AAAA at an apex).
            answer["record_types"] = list(record_types)
        return self._ok(answer)

    async def _unroute(self, account: str, tunnel_id: uuid.UUID, body: bytes) -> Response:
        """adit's ``DELETE`` of a hostname route (same body as the ``PUT``): its DNS record,
        then the route (:meth:`RouteRecords.unroute`)."""
        req = json_object(body)
        if req.get("type", "dns") != "dns":
            raise ApiError(400, BAD_REQUEST, f"unknown route type {req.get('type')!r}")
        hostname = req.get("user_hostname")
        if not isinstance(hostname, str):
            raise ApiError(400, BAD_REQUEST, f"{hostname} is not a valid hostname")
        host = await self._records.unroute(account, tunnel_id, hostname)
        return self._ok({"name": host, "deleted": True})
