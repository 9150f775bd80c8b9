"""HTTP client for the tunnel management API (adit's edge, or Cloudflare's own).

Requests, status handling and error texts follow cloudflared's ``cfapi`` so failures read the
same: ``unauthorized``, ``not found``, ``Failed to <op>: code: N, reason: msg``... TLS trusts
only the CA stored in cert.pem when there is one (the system store otherwise).
"""

from __future__ import annotations

import http.client
import json
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from adit.version import __version__

__all__ = ["ApiClient", "ApiError", "TunnelNameConflict", "fetch_unverified_ca"]

_TIMEOUT = 15.0
_USER_AGENT = f"adit/{__version__}"
_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict"}


class ApiError(Exception):
    """A management API call failed; ``str()`` is cloudflared's wording."""


class TunnelNameConflict(ApiError):
    """HTTP 409 on create."""

    def __init__(self) -> None:
        super().__init__("tunnel with name already exists")


def _tls_context(ca_pem: str) -> ssl.SSLContext:
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    return ssl.create_default_context()


def _connection(url: str, context: ssl.SSLContext) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=_TIMEOUT, context=context
        )
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=_TIMEOUT)
    else:
        raise ApiError(f"unsupported API URL {url!r}: use https://")
    return conn, parts.path.rstrip("/")


def fetch_unverified_ca(api_url: str) -> str:
    """GET ``/adit/v1/ca.pem`` WITHOUT verifying TLS.

    Only for ``login``, which pins what it gets against a fingerprint the operator handed over
    before trusting it for anything.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn, base = _connection(api_url, context)
    try:
        conn.request("GET", base + "/adit/v1/ca.pem", headers={"User-Agent": _USER_AGENT})
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ApiError(f"REST request failed: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200:
        raise ApiError(f"could not fetch the edge CA: HTTP {resp.status}")
    return body.decode("ascii", "replace")


@dataclass(frozen=True)
class _Reply:
    status: int
    content_type: str
    body: bytes


def _envelope_errors(obj: Any) -> str | None:
    errors = obj.get("errors") if isinstance(obj, dict) else None
    if not errors or not isinstance(errors, list):
        return None
    rendered = [
        f"code: {e.get('code', '')}, reason: {e.get('message', '')}"
        for e in errors
        if isinstance(e, dict)
    ]
    if len(rendered) == 1:
        return rendered[0]
    return "API errors: " + "".join(f"{r}; " for r in rendered)


@dataclass
class ApiClient:
    """One account's view of the API (cloudflared's ``RESTClient``)."""

    api_url: str
    api_token: str = field(repr=False)
    account_tag: str
    zone_id: str
    ca_pem: str = field(default="", repr=False)

    # -- transport ------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, query: dict[str, str] | None = None, body: object = None
    ) -> _Reply:
        conn, base = _connection(self.api_url, _tls_context(self.ca_pem))
        target = base + path + ("?" + urlencode(query) if query else "")
        headers = {
            "User-Agent": _USER_AGENT,
            "Authorization": f"Bearer {self.api_token}",
            "Accept": "application/json;version=1",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"REST request failed: {exc}") from exc
        finally:
            conn.close()
        return _Reply(resp.status, resp.getheader("Content-Type", "") or "", payload)

    @staticmethod
    def _status_error(op: str, reply: _Reply) -> ApiError:
        if reply.content_type == "application/json":
            try:
                detail = _envelope_errors(json.loads(reply.body))
            except ValueError:
                detail = None
            if detail:
                return ApiError(f"Failed to {op}: {detail}")
        if reply.status == 400:
            return ApiError("incorrect request parameters")
        if reply.status in (401, 403):
            return ApiError("unauthorized")
        if reply.status == 404:
            return ApiError("not found")
        reason = _REASONS.get(reply.status, http.client.responses.get(reply.status, ""))
        return ApiError(f"API call to {op} failed with status {reply.status}: {reason}")

    @staticmethod
    def _envelope(reply: _Reply) -> dict[str, Any]:
        try:
            obj = json.loads(reply.body)
        except ValueError as exc:
            raise ApiError(f"failed to decode response: {exc}") from exc
        if not isinstance(obj, dict):
            raise ApiError("failed to decode response: not an object")
        detail = _envelope_errors(obj)
        if detail:
            raise ApiError(detail)
        if not obj.get("success"):
            raise ApiError("API call failed")
        return obj

    def _result(self, op: str, reply: _Reply) -> Any:
        if reply.status != 200:
            raise self._status_error(op, reply)
        return self._envelope(reply).get("result")

    def _expect_ok(self, op: str, reply: _Reply) -> None:
        if reply.status != 200:
            raise self._status_error(op, reply)

    def access(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: object = None,
        op: str = "call the Access API",
    ) -> Any:
        """One call under ``/accounts/{account}/access/`` (``adit access app|policy|...``)."""
        base = f"/accounts/{quote(self.account_tag, safe='')}/access/"
        return self._result(op, self._call(method, base + path, query, body))

    @property
    def _tunnels(self) -> str:
        return f"/accounts/{self.account_tag}/cfd_tunnel"

    # -- calls ----------------------------------------------------------------------------

    def edge_info(self) -> dict[str, Any]:
        """adit's ``GET /adit/v1/edge`` (tunnel listener addresses, CA, account)."""
        result = self._result("get edge information", self._call("GET", "/adit/v1/edge"))
        if not isinstance(result, dict):
            raise ApiError("the API response was an unexpected type")
        return result

    def certificates(self) -> list[dict[str, Any]]:
        """adit's ``GET /adit/v1/certificates``: the public certificate of each of the
        account's routed hostnames (``hostname``, ``tunnel_id``, ``source``, ``not_after``,
        ``last_error``...)."""
        result = self._result("list certificates", self._call("GET", "/adit/v1/certificates"))
        if not isinstance(result, list):
            raise ApiError("the API response was an unexpected type")
        return [row for row in result if isinstance(row, dict)]

    def create_tunnel(self, name: str, secret_b64: str) -> dict[str, Any]:
        """``POST .../cfd_tunnel`` → ``TunnelWithToken``."""
        if not name:
            raise ApiError("tunnel name required")
        try:
            uuid.UUID(name)
        except ValueError:
            pass
        else:
            raise ApiError("you cannot use UUIDs as tunnel names")
        reply = self._call("POST", self._tunnels, body={"name": name, "tunnel_secret": secret_b64})
        if reply.status == 409:
            raise TunnelNameConflict()
        return self._object("create tunnel", reply)

    def _object(self, op: str, reply: _Reply) -> dict[str, Any]:
        result = self._result(op, reply)
        if not isinstance(result, dict):
            raise ApiError("the edge API response was an unexpected type")
        return result

    def get_tunnel(self, tunnel_id: uuid.UUID) -> dict[str, Any]:
        """``GET .../cfd_tunnel/{id}``."""
        return self._object("get tunnel", self._call("GET", f"{self._tunnels}/{tunnel_id}"))

    def delete_tunnel(self, tunnel_id: uuid.UUID, cascade: bool) -> None:
        """``DELETE .../cfd_tunnel/{id}[?cascade=true]``."""
        query = {"cascade": "true"} if cascade else None
        self._expect_ok(
            "delete tunnel", self._call("DELETE", f"{self._tunnels}/{tunnel_id}", query)
        )

    def list_tunnels(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """``GET .../cfd_tunnel?...``, fetching page after page like cloudflared."""
        return self._fetch_all("list tunnels", self._tunnels, query)

    def _fetch_all(self, op: str, path: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """cloudflared's ``fetchExhaustively``: pages until one is short or all were seen."""
        found: list[dict[str, Any]] = []
        page = 0
        while True:
            page += 1
            reply = self._call("GET", path, {**query, "page": str(page)})
            if reply.status != 200:
                raise ApiError(
                    f"Error Parsing page {page}: REST request failed: "
                    f"{self._status_error(op, reply)}"
                )
            envelope = self._envelope(reply)
            result = envelope.get("result") or []
            if not isinstance(result, list):
                raise ApiError("the edge API response was an unexpected type")
            found.extend(t for t in result if isinstance(t, dict))
            info = envelope.get("result_info") or {}
            count, per_page = int(info.get("count", 0)), int(info.get("per_page", 0))
            if count < per_page or len(found) >= int(info.get("total_count", 0)):
                return found

    def list_active_clients(self, tunnel_id: uuid.UUID) -> list[dict[str, Any]]:
        """``GET .../cfd_tunnel/{id}/connections``."""
        result = self._result(
            "list connection details",
            self._call("GET", f"{self._tunnels}/{tunnel_id}/connections"),
        )
        return [c for c in result or [] if isinstance(c, dict)]

    def cleanup_connections(self, tunnel_id: uuid.UUID, client_id: uuid.UUID | None) -> None:
        """``DELETE .../cfd_tunnel/{id}/connections[?client_id=]``."""
        query = {"client_id": str(client_id)} if client_id else None
        self._expect_ok(
            "cleanup connections",
            self._call("DELETE", f"{self._tunnels}/{tunnel_id}/connections", query),
        )

    def get_tunnel_token(self, tunnel_id: uuid.UUID) -> str:
        """``GET .../cfd_tunnel/{id}/token``."""
        result = self._result(
            "get tunnel token", self._call("GET", f"{self._tunnels}/{tunnel_id}/token")
        )
        if not isinstance(result, str):
            raise ApiError("the edge API response was an unexpected type")
        return result

    def get_management_token(self, tunnel_id: uuid.UUID, resource: str) -> str:
        """``POST .../cfd_tunnel/{id}/management/{logs|admin|host_details}`` (``tail``)."""
        result = self._result(
            "get tunnel token",  # cloudflared's wording for this call too
            self._call("POST", f"{self._tunnels}/{tunnel_id}/management/{resource}"),
        )
        if not isinstance(result, str):
            raise ApiError("the Cloudflare API response was an unexpected type")
        return result

    def rotate_tunnel_secret(self, tunnel_id: uuid.UUID, deadline_seconds: float) -> dict[str, Any]:
        """adit's ``POST .../cfd_tunnel/{id}/rotate``: a new secret; the old one stays valid for
        ``deadline_seconds`` (or until every connection re-registered, or :meth:`finish`)."""
        reply = self._call(
            "POST",
            f"{self._tunnels}/{tunnel_id}/rotate",
            body={"deadline_seconds": deadline_seconds},
        )
        return self._object("rotate tunnel secret", reply)

    def finish_rotation(self, tunnel_id: uuid.UUID) -> bool:
        """adit's ``POST .../cfd_tunnel/{id}/rotate/finish``: refuse the previous secret now."""
        result = self._object(
            "finish secret rotation",
            self._call("POST", f"{self._tunnels}/{tunnel_id}/rotate/finish", body={}),
        )
        return bool(result.get("finished"))

    def route_dns(self, tunnel_id: uuid.UUID, hostname: str, overwrite: bool) -> dict[str, Any]:
        """``PUT /zones/{zone}/tunnels/{id}/routes`` with a DNS route."""
        body = {"type": "dns", "user_hostname": hostname, "overwrite_existing": overwrite}
        reply = self._call("PUT", f"/zones/{self.zone_id}/tunnels/{tunnel_id}/routes", body=body)
        return self._object("add route", reply)

    def delete_route_dns(self, tunnel_id: uuid.UUID, hostname: str) -> dict[str, Any]:
        """adit's ``DELETE /zones/{zone}/tunnels/{id}/routes``: the route and its DNS record."""
        body = {"type": "dns", "user_hostname": hostname}
        reply = self._call("DELETE", f"/zones/{self.zone_id}/tunnels/{tunnel_id}/routes", body=body)
        return self._object("delete route", reply)

    # -- private networks (cfapi/ip_route.go, cfapi/virtual_network.go) -------------------

    @property
    def _routes(self) -> str:
        return f"/accounts/{self.account_tag}/teamnet/routes"

    @property
    def _vnets(self) -> str:
        return f"/accounts/{self.account_tag}/teamnet/virtual_networks"

    def list_routes(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """``GET .../teamnet/routes?...`` (every page): ``[]DetailedRoute``."""
        return self._fetch_all("list routes", self._routes, query)

    def add_route(
        self, network: str, tunnel_id: uuid.UUID, comment: str, vnet_id: uuid.UUID | None
    ) -> dict[str, Any]:
        """``POST .../teamnet/routes`` → ``Route``."""
        body: dict[str, str] = {
            "network": network,
            "tunnel_id": str(tunnel_id),
            "comment": comment,
        }
        if vnet_id is not None:
            body["virtual_network_id"] = str(vnet_id)
        return self._object("add route", self._call("POST", self._routes, body=body))

    def delete_route(self, route_id: uuid.UUID) -> None:
        """``DELETE .../teamnet/routes/{id}``."""
        self._result("delete route", self._call("DELETE", f"{self._routes}/{route_id}"))

    def get_route_by_ip(self, ip: str, vnet_id: uuid.UUID | None) -> dict[str, Any] | None:
        """``GET .../teamnet/routes/ip/{ip}[?virtual_network_id=]``: the ``DetailedRoute``
        serving ``ip``, None when no route does."""
        query = {"virtual_network_id": str(vnet_id)} if vnet_id is not None else None
        result = self._result(
            "get route by IP", self._call("GET", f"{self._routes}/ip/{ip}", query)
        )
        if result is not None and not isinstance(result, dict):
            raise ApiError("the edge API response was an unexpected type")
        return result or None

    def create_vnet(self, name: str, comment: str, is_default: bool) -> dict[str, Any]:
        """``POST .../teamnet/virtual_networks`` → ``VirtualNetwork``."""
        body = {"name": name, "comment": comment, "is_default_network": is_default}
        return self._object("add virtual network", self._call("POST", self._vnets, body=body))

    def list_vnets(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """``GET .../teamnet/virtual_networks?...`` (one request, as cloudflared makes)."""
        result = self._result("list virtual networks", self._call("GET", self._vnets, query))
        if result is None:
            return []  # Go decodes a null result as no networks
        if not isinstance(result, list):
            raise ApiError("the edge API response was an unexpected type")
        return [v for v in result if isinstance(v, dict)]

    def delete_vnet(self, vnet_id: uuid.UUID, force: bool) -> None:
        """``DELETE .../teamnet/virtual_networks/{id}[?force=true]``."""
        query = {"force": "true"} if force else None
        self._result(
            "delete virtual network", self._call("DELETE", f"{self._vnets}/{vnet_id}", query)
        )

    def update_vnet(self, vnet_id: uuid.UUID, updates: dict[str, object]) -> None:
        """``PATCH .../teamnet/virtual_networks/{id}`` with the fields to change."""
        self._result(
            "update virtual network",
            self._call("PATCH", f"{self._vnets}/{vnet_id}", body=updates),
        )
