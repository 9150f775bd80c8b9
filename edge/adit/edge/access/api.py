"""The management API's Access endpoints: ``/accounts/{a}/access/...`` in Cloudflare's shapes.

* ``GET|POST apps``, ``GET|PUT|DELETE apps/{id}``;
* ``GET|POST apps/{id}/policies``, ``GET|PUT|DELETE apps/{id}/policies/{policy_id}``;
* ``GET|POST identity_providers``, ``GET|PUT|DELETE identity_providers/{id}`` (secrets are
  answered as ``*****``);
* ``GET|POST service_tokens``, ``PUT|DELETE service_tokens/{id}``,
  ``POST service_tokens/{id}/rotate`` (a new secret, same client id),
  ``POST service_tokens/{id}/refresh`` (expiry pushed out); the secret is answered on create
  and rotate only;
* ``GET|POST|DELETE apps/{id}/ca`` (the application's short-lived SSH certificate CA:
  ``{id, aud, public_key}``, :mod:`adit.edge.access.ssh_ca`), ``GET apps/ca`` (all of them);
* ``GET logs/access_requests`` (``since``, ``until``, ``email``, ``app``, ``action``,
  ``page``/``per_page``, or Cloudflare's ``limit``), newest first;
* ``GET|PUT organizations`` (``auth_domain``: the team domain, issuer of the tokens);
* ``GET|PUT keys`` (``key_rotation_interval_days``), ``POST keys/rotate`` (signing keys
  rotate by themselves at that interval, or now; the previous stay in the key set a while);
* adit's: ``GET export`` and ``PUT apply`` (:mod:`adit.edge.access.setup`).

The caller's account was authenticated and matched to the path by :mod:`adit.edge.api`.
"""

from __future__ import annotations

import datetime
from typing import Any

from adit.edge.access import setup
from adit.edge.access.decisions import query
from adit.edge.access.ssh_ca import SshCas
from adit.edge.access.store import AccessStore
from adit.edge.api_json import envelope
from adit.edge.api_request import (
    BAD_REQUEST,
    ApiError,
    Response,
    int_param,
    json_object,
    json_response,
    page_of,
)

__all__ = ["AccessApi"]

_METHOD_NOT_ALLOWED = 10405
_NOT_ROUTABLE = 7003


def _ok(result: object, result_info: dict[str, int] | None = None) -> Response:
    return json_response(200, envelope(result, result_info))


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(405, _METHOD_NOT_ALLOWED, "Method not allowed")


def _moment(query: dict[str, str], name: str) -> str | None:
    text = query.get(name)
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, BAD_REQUEST, f"{name} must be RFC 3339 (2026-01-02T03:04:05Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).isoformat()


class AccessApi:
    """Access for the authenticated account."""

    def __init__(self, store: AccessStore) -> None:
        self._store = store
        self._cas = SshCas(store)

    async def dispatch(
        self, method: str, account: str, rest: list[str], query: dict[str, str], body: bytes
    ) -> Response:
        """Answer ``/accounts/{account}/access/{rest...}``."""
        store = self._store
        head = rest[0] if rest else ""
        if head == "apps":
            return await self._apps(method, account, rest[1:], query, body)
        if head == "identity_providers":
            return await self._idps(method, account, rest[1:], query, body)
        if head == "service_tokens":
            return await self._tokens(method, account, rest[1:], query, body)
        if rest == ["logs", "access_requests"]:
            _allow(method, "GET")
            return self._logs(account, query)
        if rest == ["organizations"]:
            if method == "GET":
                return _ok({"auth_domain": store.auth_domain(account)})
            _allow(method, "PUT")
            domain = json_object(body).get("auth_domain")
            if not isinstance(domain, str):
                raise ApiError(400, BAD_REQUEST, "auth_domain is required (team.example.com)")
            done = await self._off(store.set_auth_domain, account, domain)
            return _ok({"auth_domain": done})
        if rest == ["keys"]:
            if method == "PUT":
                days = json_object(body).get("key_rotation_interval_days")
                await self._off(store.set_key_rotation, account, days)
                return _ok(self._keys(account))
            _allow(method, "GET")
            return _ok(self._keys(account))
        if rest == ["keys", "rotate"]:
            _allow(method, "POST")
            await self._off(store.rotate_keys, account)
            return _ok(self._keys(account))
        if rest == ["export"]:
            _allow(method, "GET")
            return _ok(setup.export(store, account))
        if rest == ["apply"]:
            _allow(method, "PUT", "POST")
            return _ok(await self._off(setup.apply, store, account, json_object(body)))
        raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")

    async def _off(self, call: Any, *args: Any) -> Any:
        return await self._store.db.off_loop(call, *args)

    def _keys(self, account: str) -> dict[str, Any]:
        keys = self._store.table().keys.get(account, ())
        return {
            **self._store.key_settings(account),
            "keys": [{"kid": k.kid, "current": not k.retired} for k in keys],
            "certs_url": f"https://{self._store.auth_domain(account)}/cdn-cgi/access/certs",
        }

    async def _apps(
        self, method: str, account: str, rest: list[str], query: dict[str, str], body: bytes
    ) -> Response:
        store = self._store
        if not rest:
            if method == "GET":
                items, info = page_of(query, [a.json() for a in store.apps(account)])
                return _ok(items, info)
            _allow(method, "POST")
            return _ok((await self._off(store.create_app, account, json_object(body))).json())
        app_id = rest[0]
        if rest == ["ca"]:
            _allow(method, "GET")
            return _ok([ca.json() for ca in self._cas.list(account)])
        if rest[1:] == ["ca"]:
            return await self._ca(method, account, app_id)
        if len(rest) == 1:
            if method == "GET":
                return _ok(store.app(account, app_id).json())
            if method == "PUT":
                app = await self._off(store.update_app, account, app_id, json_object(body))
                return _ok(app.json())
            _allow(method, "DELETE")
            await self._off(store.delete_app, account, app_id)
            return _ok({"id": app_id})
        if rest[1] != "policies" or len(rest) > 3:
            raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")
        if len(rest) == 2:
            if method == "GET":
                items, info = page_of(query, [p.json() for p in store.policies(account, app_id)])
                return _ok(items, info)
            _allow(method, "POST")
            policy = await self._off(store.create_policy, account, app_id, json_object(body))
            return _ok(policy.json())
        policy_id = rest[2]
        if method == "GET":
            return _ok(store.policy(account, app_id, policy_id).json())
        if method == "PUT":
            policy = await self._off(
                store.update_policy, account, app_id, policy_id, json_object(body)
            )
            return _ok(policy.json())
        _allow(method, "DELETE")
        await self._off(store.delete_policy, account, app_id, policy_id)
        return _ok({"id": policy_id})

    async def _ca(self, method: str, account: str, app_id: str) -> Response:
        if method == "GET":
            return _ok(self._cas.get(account, app_id).json())
        if method == "POST":
            return _ok((await self._off(self._cas.create, account, app_id)).json())
        _allow(method, "DELETE")
        return _ok({"id": await self._off(self._cas.delete, account, app_id)})

    async def _idps(
        self, method: str, account: str, rest: list[str], query: dict[str, str], body: bytes
    ) -> Response:
        store = self._store
        if not rest:
            if method == "GET":
                items, info = page_of(query, [i.json() for i in store.idps(account)])
                return _ok(items, info)
            _allow(method, "POST")
            return _ok((await self._off(store.create_idp, account, json_object(body))).json())
        if len(rest) != 1:
            raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")
        if method == "GET":
            return _ok(store.idp(account, rest[0]).json())
        if method == "PUT":
            return _ok(
                (await self._off(store.update_idp, account, rest[0], json_object(body))).json()
            )
        _allow(method, "DELETE")
        await self._off(store.delete_idp, account, rest[0])
        return _ok({"id": rest[0]})

    async def _tokens(
        self, method: str, account: str, rest: list[str], query: dict[str, str], body: bytes
    ) -> Response:
        store = self._store
        if not rest:
            if method == "GET":
                items, info = page_of(query, [t.json() for t in store.service_tokens(account)])
                return _ok(items, info)
            _allow(method, "POST")
            issued = await self._off(store.create_service_token, account, json_object(body))
            return _ok(issued.json())
        token_id = rest[0]
        if len(rest) == 1:
            if method == "GET":
                return _ok(store.service_token(account, token_id).json())
            if method == "PUT":
                token = await self._off(
                    store.update_service_token, account, token_id, json_object(body)
                )
                return _ok(token.json())
            _allow(method, "DELETE")
            return _ok((await self._off(store.delete_service_token, account, token_id)).json())
        if rest[1:] == ["rotate"]:
            _allow(method, "POST")
            return _ok((await self._off(store.rotate_service_token, account, token_id)).json())
        if rest[1:] == ["refresh"]:
            _allow(method, "POST")
            return _ok((await self._off(store.refresh_service_token, account, token_id)).json())
        raise ApiError(404, _NOT_ROUTABLE, "Could not route to the requested resource")

    def _logs(self, account: str, query_args: dict[str, str]) -> Response:
        per_page = int_param(
            query_args, "per_page", int_param(query_args, "limit", 25, 1, 1000), 1, 1000
        )
        page = int_param(query_args, "page", 1, 1, 1 << 30)
        action = query_args.get("action") or None
        entries, total = query(
            self._store.db,
            account,
            since=_moment(query_args, "since"),
            until=_moment(query_args, "until"),
            email=query_args.get("email") or None,
            app=query_args.get("app") or None,
            action=action,
            limit=per_page,
            offset=(page - 1) * per_page,
        )
        info = {
            "count": len(entries),
            "page": page,
            "per_page": per_page,
            "total_count": total,
            "total_pages": max(1, -(-total // per_page)),
        }
        return _ok([e.json() for e in entries], info)
