"""The management API: cloudflared's REST paths and v4 envelope, served by ``adit edge``.

Pure request → response (no sockets): the edge's HTTPS listener calls ``ManagementApi.handle``.
Paths are accepted with or without Cloudflare's ``/client/v4`` prefix, so ``--api-url`` may be
``https://edge:port`` or ``https://edge:port/client/v4``; the real cloudflared CLI works too.

Authorisation: every path except ``/adit/v1/ca.pem`` needs ``Authorization: Bearer <token>``; a
token acts for exactly one account, and any path naming another account or zone is refused
before a lookup happens.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from adit.credentials import TunnelCredentials, encode_tunnel_token
from adit.edge.api_json import active_clients_json, envelope, error_envelope, tunnel_json
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import (
    AccountNotFound,
    HostnameConflict,
    HostnameOutsideZones,
    HostnameRefused,
    HostnameTaken,
    InvalidName,
    Store,
    StoreBusy,
    StoreError,
    Tunnel,
    TunnelDeleted,
    TunnelNameConflict,
    TunnelNotFound,
    WeakSecret,
)

log = logging.getLogger("adit.edge.api")

__all__ = ["MAX_BODY", "EdgeInfo", "ManagementApi", "Response"]

#: Request bodies are tiny JSON documents; anything bigger is refused unread by the listener.
MAX_BODY = 1 << 20

Response = tuple[int, list[tuple[bytes, bytes]], bytes]

_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
]
_PREFIX = "/client/v4"
_DEFAULT_PER_PAGE = 20
#: How long the previous tunnel secret stays valid after ``rotate`` unless finished earlier.
DEFAULT_ROTATION_DEADLINE = 3600
MAX_ROTATION_DEADLINE = 30 * 24 * 3600
_MAX_PER_PAGE = 1000

# Cloudflare's error codes where one exists; the CLI prints them as ``code: N, reason: msg``.
_AUTH_ERROR = 10000
_NOT_ROUTABLE = 7003
_METHOD_NOT_ALLOWED = 10405
_BAD_REQUEST = 1001
_NOT_FOUND = 1003
_NAME_CONFLICT = 1013
_ACTIVE_CONNECTIONS = 1022
_ROUTE_CONFLICT = 1053
_DNS_VALIDATION = 1004  # Cloudflare's "DNS Validation Error"
_NO_ZONE_ACCESS = 9109  # Cloudflare's "Unauthorized to access requested resource"
_INTERNAL = 10001
_UNAVAILABLE = 10013

#: How each refusal of the store reaches the caller: HTTP status and Cloudflare code; the
#: message is the error's own.
_STORE_ERRORS: dict[type[StoreError], tuple[int, int]] = {
    StoreBusy: (503, _UNAVAILABLE),
    AccountNotFound: (404, _NOT_FOUND),
    TunnelNotFound: (404, _NOT_FOUND),
    TunnelDeleted: (400, _NOT_FOUND),
    TunnelNameConflict: (409, _NAME_CONFLICT),
    InvalidName: (400, _BAD_REQUEST),
    WeakSecret: (400, _BAD_REQUEST),
    HostnameConflict: (409, _ROUTE_CONFLICT),
    HostnameTaken: (409, _ROUTE_CONFLICT),
    HostnameRefused: (400, _DNS_VALIDATION),
    HostnameOutsideZones: (403, _NO_ZONE_ACCESS),
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


class ApiError(Exception):
    """A request refused with an HTTP status and one envelope error."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json_response(status: int, body: bytes) -> Response:
    return status, list(_JSON_HEADERS), body


def _store_error(exc: StoreError) -> ApiError:
    status, code = next(
        (answer for kind, answer in _STORE_ERRORS.items() if isinstance(exc, kind)),
        (400, _BAD_REQUEST),
    )
    return ApiError(status, code, str(exc))


def _parse_uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ApiError(400, _BAD_REQUEST, f"{what} is not a valid UUID: {text}") from None


def _parse_bool(text: str, what: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise ApiError(400, _BAD_REQUEST, f"{what} must be true or false")


class ManagementApi:
    """cloudflared's tunnel management endpoints over the edge's store and registry."""

    def __init__(self, store: Store, registry: ConnectionRegistry, edge_info: EdgeInfo) -> None:
        self._store = store
        self._registry = registry
        self._edge = edge_info

    async def handle(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        """Answer one request; never raises, whatever the request (a bug of ours is a 500)."""
        try:
            return await self._dispatch(method.upper(), target, headers, body)
        except ApiError as exc:
            return _json_response(exc.status, error_envelope(exc.code, exc.message))
        except StoreError as exc:
            error = _store_error(exc)
            return _json_response(error.status, error_envelope(error.code, error.message))
        except Exception:
            log.exception("management API request failed: %s %s", method, target[:200])
            return _json_response(500, error_envelope(_INTERNAL, "Internal error"))

    # -- dispatch -------------------------------------------------------------------------

    async def _dispatch(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        if len(body) > MAX_BODY:
            raise ApiError(413, _BAD_REQUEST, "request body too large")
        parts = urlsplit(target)
        path = parts.path
        if path.startswith(_PREFIX + "/"):
            path = path[len(_PREFIX) :]
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segments = [s for s in path.split("/") if s]

        if segments == ["adit", "v1", "ca.pem"]:
            self._allow(method, "GET")
            return 200, [(b"content-type", b"application/x-pem-file")], self._edge.ca_pem.encode()

        account = self._authenticate(headers)
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
        if len(segments) >= 3 and segments[0] == "accounts" and segments[2] == "cfd_tunnel":
            self._same_account(account, segments[1])
            return await self._tunnels(method, account, segments[3:], query, body)
        if (
            len(segments) == 5
            and segments[0] == "zones"
            and segments[2] == "tunnels"
            and segments[4] == "routes"
        ):
            # The account is the zone (cert.pem's zoneID is the account tag).
            self._same_account(account, segments[1])
            self._allow(method, "PUT")
            return await self._route(account, _parse_uuid(segments[3], "tunnel ID"), body)
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
        tunnel_id = _parse_uuid(rest[0], "tunnel ID")
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
                tunnel.id, _parse_uuid(client_id, "client_id") if client_id else None
            )
            return self._ok(None)
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
                raise ApiError(400, _NOT_FOUND, f"Tunnel {tunnel.id} has been deleted")
            return self._ok(self._token(tunnel))
        raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(405, _METHOD_NOT_ALLOWED, "Method not allowed")

    @staticmethod
    def _ok(result: object, result_info: dict[str, int] | None = None) -> Response:
        return _json_response(200, envelope(result, result_info))

    def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> str:
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
            raise ApiError(404, _NOT_FOUND, f"Tunnel {tunnel_id} not found")
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

    @staticmethod
    def _body(body: bytes) -> dict[str, Any]:
        try:
            obj = msgspec.json.decode(body or b"{}")
        except msgspec.DecodeError:
            raise ApiError(400, _BAD_REQUEST, "Invalid request body: not JSON") from None
        except RecursionError:
            # msgspec stops at its nesting limit (about a thousand levels) with this, at once.
            raise ApiError(400, _BAD_REQUEST, "Invalid request body: nested too deeply") from None
        if not isinstance(obj, dict):
            raise ApiError(400, _BAD_REQUEST, "Invalid request body: expected a JSON object")
        return obj

    # -- endpoints ------------------------------------------------------------------------

    async def _create(self, account: str, body: bytes) -> Response:
        req = self._body(body)
        name = req.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, _BAD_REQUEST, "tunnel name required")
        try:
            uuid.UUID(name)
        except ValueError:
            pass
        else:
            raise ApiError(400, _BAD_REQUEST, "you cannot use UUIDs as tunnel names")
        if len(name) > 255:
            raise ApiError(400, _BAD_REQUEST, "tunnel name must be at most 255 characters")
        secret: bytes | None = None
        raw_secret = req.get("tunnel_secret")
        if raw_secret is not None:
            if not isinstance(raw_secret, str):
                raise ApiError(400, _BAD_REQUEST, "tunnel_secret must be a base64 string")
            try:
                secret = base64.b64decode(raw_secret, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, _BAD_REQUEST, "tunnel_secret must be base64") from None
        remote = req.get("config_src") == "cloudflare"
        try:
            tunnel = await self._store.off_loop(
                self._store.create_tunnel, account, name, secret, remote_config=remote
            )
        except TunnelNameConflict:
            raise ApiError(409, _NAME_CONFLICT, "A tunnel with this name already exists") from None
        return self._ok(self._tunnel_json(tunnel, token=self._token(tunnel)))

    def _list(self, account: str, query: dict[str, str]) -> Response:
        existed_at: datetime.datetime | None = None
        if query.get("existed_at"):
            try:
                existed_at = datetime.datetime.fromisoformat(query["existed_at"])
            except ValueError:
                raise ApiError(400, _BAD_REQUEST, "existed_at must be RFC 3339") from None
            if existed_at.tzinfo is None:
                existed_at = existed_at.replace(tzinfo=datetime.UTC)
        is_deleted = query.get("is_deleted")
        tunnel_uuid = query.get("uuid")
        tunnels = self._store.list_tunnels(
            account,
            name=query.get("name") or None,
            name_prefix=query.get("name_prefix") or None,
            exclude_prefix=query.get("exclude_prefix") or None,
            is_deleted=_parse_bool(is_deleted, "is_deleted") if is_deleted else None,
            tunnel_id=_parse_uuid(tunnel_uuid, "uuid") if tunnel_uuid else None,
            existed_at=existed_at,
        )
        page = self._int_param(query, "page", 1, 1, 1 << 30)
        per_page = self._int_param(query, "per_page", _DEFAULT_PER_PAGE, 1, _MAX_PER_PAGE)
        chunk = tunnels[(page - 1) * per_page : page * per_page]
        info = {
            "count": len(chunk),
            "page": page,
            "per_page": per_page,
            "total_count": len(tunnels),
            "total_pages": max(1, -(-len(tunnels) // per_page)),
        }
        return self._ok([self._tunnel_json(t) for t in chunk], info)

    @staticmethod
    def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
        text = query.get(name)
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ApiError(400, _BAD_REQUEST, f"{name} must be an integer") from None
        if not low <= value <= high:
            raise ApiError(400, _BAD_REQUEST, f"{name} must be between {low} and {high}")
        return value

    async def _delete(self, account: str, tunnel_id: uuid.UUID, query: dict[str, str]) -> Response:
        tunnel = self._get(account, tunnel_id)
        if tunnel.deleted_at is not None:
            raise ApiError(400, _NOT_FOUND, f"Tunnel {tunnel.id} has already been deleted")
        cascade = _parse_bool(query["cascade"], "cascade") if query.get("cascade") else False
        if self._registry.connections(tunnel.id):
            if not cascade:
                raise ApiError(
                    400,
                    _ACTIVE_CONNECTIONS,
                    "Cannot delete tunnel because it has active connections. Stop its "
                    "connectors or run `adit tunnel cleanup`, or delete it with -f",
                )
            self._registry.disconnect(tunnel.id)
        try:
            deleted = await self._store.off_loop(self._store.delete_tunnel, account, tunnel.id)
        except TunnelNotFound:
            raise ApiError(404, _NOT_FOUND, f"Tunnel {tunnel_id} not found") from None
        except TunnelDeleted as exc:
            raise ApiError(400, _NOT_FOUND, str(exc)) from None
        self._registry.revalidate(tunnel.id)  # one that registered meanwhile goes too
        return self._ok(self._tunnel_json(deleted))

    async def _rotate(self, account: str, tunnel_id: uuid.UUID, body: bytes) -> Response:
        """adit's secret rotation: a new secret now, the old one accepted until the deadline
        (or until every connection re-registered with the new one, or ``rotate/finish``)."""
        req = self._body(body)
        deadline = req.get("deadline_seconds", DEFAULT_ROTATION_DEADLINE)
        if (
            not isinstance(deadline, int | float)
            or isinstance(deadline, bool)
            or not 0 <= deadline <= MAX_ROTATION_DEADLINE
        ):
            raise ApiError(
                400,
                _BAD_REQUEST,
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
            raise ApiError(404, _NOT_FOUND, f"Tunnel {tunnel_id} not found") from None
        except TunnelDeleted as exc:
            raise ApiError(400, _NOT_FOUND, str(exc)) from None
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
        req = self._body(body)
        route_type = req.get("type")
        if route_type == "lb":
            raise ApiError(400, _BAD_REQUEST, "load balancer routes are not supported by adit")
        if route_type != "dns":
            raise ApiError(400, _BAD_REQUEST, f"unknown route type {route_type!r}")
        hostname = req.get("user_hostname")
        if not isinstance(hostname, str):
            raise ApiError(400, _BAD_REQUEST, f"{hostname} is not a valid hostname")
        overwrite = req.get("overwrite_existing") is True
        try:
            result = await self._store.off_loop(
                self._store.route_hostname, account, tunnel_id, hostname, overwrite=overwrite
            )
        except TunnelNotFound:
            raise ApiError(404, _NOT_FOUND, f"Tunnel {tunnel_id} not found") from None
        return self._ok({"cname": str(result.change), "name": result.hostname})
