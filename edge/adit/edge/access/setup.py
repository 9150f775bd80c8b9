"""An account's whole Access setup as one document (``adit access export`` / ``apply -f``).

The document (YAML or JSON; the API takes and gives JSON)::

    organization: {auth_domain: team.example.com}
    identity_providers:
      - {name: corp, type: oidc, config: {discovery_url: ..., client_id: ..., client_secret: ...}}
    service_tokens:
      - {name: ci, duration: 8760h}
    apps:
      - name: wiki
        domain: wiki.example.com
        session_duration: 24h
        allowed_idps: [corp]          # providers by name
        ssh_ca: true                  # a short-lived SSH certificate CA (ssh_ca.py)
        policies:
          - {name: staff, decision: allow, include: [{email_domain: {domain: example.com}}]}
          - {name: ci, decision: non_identity, include: [{service_token: {token_id: ci}}]}

Names are the keys: applying matches providers and tokens by name, applications by domain
and policies by name within their application, creates what is missing, updates what
differs and deletes applications, policies and providers the document no longer has
(declarative: the file in git is the truth). Service tokens are only ever created (deleting
one would lock a machine out; ``access service-token delete`` does that on purpose), and a
service-token rule may name the token by name. ``ssh_ca: true`` gives an application its SSH
CA when it has none; like a token, a CA is never deleted here (the SSH servers trusting it
would lock everyone out): ``DELETE .../apps/{id}/ca`` does that. Secrets are exported as
``*****``; applying ``*****`` keeps the stored secret. Applying the same document twice
changes nothing.
"""

from __future__ import annotations

from typing import Any

from adit.edge.access.model import InvalidAccess, parse_duration
from adit.edge.access.ssh_ca import SshCas
from adit.edge.access.store import AccessStore, InvalidAccessSetup

__all__ = ["apply", "export"]


def export(store: AccessStore, account: str) -> dict[str, Any]:
    """The account's Access setup as a document."""
    idps = store.idps(account)
    idp_names = {i.id: i.name for i in idps}
    tokens = store.service_tokens(account)
    token_names = {t.id: t.name for t in tokens}
    apps = []
    with_ca = {ca.app_id for ca in SshCas(store).list(account)}
    for app in store.apps(account):
        policies = []
        for policy in store.policies(account, app.id):
            shown = policy.json()
            del shown["id"]
            for part in ("include", "require", "exclude"):
                shown[part] = [_named_token(r, token_names) for r in shown[part]]
                if not shown[part] and part != "include":
                    del shown[part]
            policies.append(shown)
        entry = app.json()
        apps.append(
            {
                "name": entry["name"],
                "domain": entry["domain"],
                "session_duration": entry["session_duration"],
                "allowed_idps": [idp_names[i] for i in app.allowed_idps if i in idp_names],
                "policies": policies,
                **({"ssh_ca": True} if app.id in with_ca else {}),
            }
        )
    return {
        "organization": {"auth_domain": store.auth_domain(account)},
        "identity_providers": [
            {"name": i.name, "type": i.type, "config": i.json()["config"]} for i in idps
        ],
        "service_tokens": [{"name": t.name, "duration": t.duration} for t in tokens],
        "apps": apps,
    }


def _named_token(rule: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    inner = rule.get("service_token")
    if inner is not None and inner["token_id"] in names:
        return {"service_token": {"token_id": names[inner["token_id"]]}}
    return rule


def _list(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidAccessSetup(f"{key}: must be a list of objects")
    return value


def apply(store: AccessStore, account: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Make the account's setup what ``doc`` says; returns what changed (and the secrets of
    service tokens created now: the only time they are shown)."""
    unknown = sorted(set(doc) - {"organization", "identity_providers", "service_tokens", "apps"})
    if unknown:
        raise InvalidAccessSetup(
            f"unknown key {unknown[0]!r}; known: organization, identity_providers, "
            "service_tokens, apps"
        )
    changes: list[str] = []
    created_tokens: list[dict[str, Any]] = []
    org = doc.get("organization") or {}
    if not isinstance(org, dict):
        raise InvalidAccessSetup("organization: must be an object")
    domain = org.get("auth_domain")
    if domain and str(domain).lower() != store.auth_domain(account):
        store.set_auth_domain(account, str(domain))
        changes.append(f"organization auth_domain {domain}")

    # Identity providers, by name.
    wanted_idps = _list(doc, "identity_providers")
    _unique(wanted_idps, "name", "identity_providers")
    current = {i.name: i for i in store.idps(account)}
    for raw in wanted_idps:
        old = current.get(str(raw.get("name")))
        if old is None:
            store.create_idp(account, raw)
            changes.append(f"identity provider {raw.get('name')} created")
        elif store.normal_idp(raw, old.secrets) != (
            old.name,
            old.type,
            dict(old.config),
            dict(old.secrets),
        ):
            store.update_idp(account, old.id, raw)
            changes.append(f"identity provider {old.name} updated")
    idp_ids = {i.name: i.id for i in store.idps(account)}

    # Service tokens, by name: created, never deleted here.
    known_tokens = {t.name: t for t in store.service_tokens(account)}
    for raw in _list(doc, "service_tokens"):
        if str(raw.get("name")) not in known_tokens:
            issued = store.create_service_token(account, raw)
            created_tokens.append(issued.json())
            changes.append(f"service token {issued.token.name} created")
    token_ids = {t.name: t.id for t in store.service_tokens(account)}

    # Applications by domain, their policies by name.
    wanted_apps = _list(doc, "apps")
    _unique(wanted_apps, "domain", "apps")
    apps = {a.domain + a.path: a for a in store.apps(account)}
    cas = {ca.app_id for ca in SshCas(store).list(account)}
    seen: set[str] = set()
    for raw in wanted_apps:
        spec = {k: v for k, v in raw.items() if k not in ("policies", "ssh_ca")}
        spec["allowed_idps"] = [idp_ids.get(str(n), str(n)) for n in raw.get("allowed_idps") or []]
        domain_key = str(raw.get("domain", "")).strip().lower().rstrip("/")
        app = apps.get(domain_key)
        if app is None:
            app = store.create_app(account, spec)
            changes.append(f"application {app.domain}{app.path} created")
        else:
            shown = app.json()
            if any(shown.get(k) != v for k, v in spec.items() if k != "session_duration") or (
                "session_duration" in spec
                and _seconds(spec["session_duration"]) != app.session_duration
            ):
                app = store.update_app(account, app.id, spec)
                changes.append(f"application {app.domain}{app.path} updated")
        seen.add(app.id)
        changes += _apply_policies(store, account, app.id, raw, token_ids)
        if raw.get("ssh_ca") is True and app.id not in cas:
            SshCas(store).create(account, app.id)
            changes.append(f"SSH CA of {app.domain}{app.path} created")
    for app in apps.values():
        if app.id not in seen:
            store.delete_app(account, app.id)
            changes.append(f"application {app.domain}{app.path} deleted")
    for name, idp_id in idp_ids.items():
        if name not in {str(r.get("name")) for r in wanted_idps}:
            store.delete_idp(account, idp_id)
            changes.append(f"identity provider {name} deleted")
    return {"changes": changes, "created_service_tokens": created_tokens}


def _apply_policies(
    store: AccessStore,
    account: str,
    app_id: str,
    raw_app: dict[str, Any],
    token_ids: dict[str, str],
) -> list[str]:
    changes = []
    wanted = _list(raw_app, "policies")
    _unique(wanted, "name", f"apps[{raw_app.get('domain')}].policies")
    current = {p.name: p for p in store.policies(account, app_id)}
    for index, raw in enumerate(wanted):
        spec = dict(raw)
        spec.setdefault("precedence", index + 1)
        for part in ("include", "require", "exclude"):
            spec[part] = [_token_by_name(r, token_ids) for r in spec.get(part) or []]
        old = current.pop(str(spec.get("name")), None)
        if old is None:
            store.create_policy(account, app_id, spec)
            changes.append(f"policy {spec.get('name')} created")
            continue
        shown = old.json()
        del shown["id"]
        try:
            normal = store.normal_policy(spec)
        except InvalidAccess as exc:
            raise InvalidAccessSetup(str(exc)) from None
        if normal != shown:
            store.update_policy(account, app_id, old.id, spec)
            changes.append(f"policy {old.name} updated")
    for old in current.values():
        store.delete_policy(account, app_id, old.id)
        changes.append(f"policy {old.name} deleted")
    return changes


def _token_by_name(rule: object, token_ids: dict[str, str]) -> object:
    if isinstance(rule, dict) and isinstance(rule.get("service_token"), dict):
        ref = str(rule["service_token"].get("token_id", ""))
        if ref in token_ids:
            return {"service_token": {"token_id": token_ids[ref]}}
    return rule


def _unique(items: list[dict[str, Any]], key: str, where: str) -> None:
    seen: set[str] = set()
    for item in items:
        value = str(item.get(key, "")).strip().lower()
        if value in seen:
            raise InvalidAccessSetup(f"{where}: {key} {value!r} appears twice")
        seen.add(value)


def _seconds(value: object) -> int:
    try:
        return parse_duration(value, "session_duration")
    except InvalidAccess as exc:
        raise InvalidAccessSetup(str(exc)) from None
