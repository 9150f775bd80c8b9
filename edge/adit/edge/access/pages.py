"""What Access answers a visitor itself: the redirect to the login page, 401 for API clients,
the 403 denial page, the login page's stand-in, and the key set.

Each is an :class:`~adit.edge.pages.ErrorPage` (the listeners already know how to send one)
with its own body and headers. A denial names the application and what to do, never the
policy that decided (that is for the operator, in the access log under the Ray ID).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from adit.edge.pages import ErrorPage

__all__ = [
    "AccessPage",
    "JsonAnswer",
    "denied",
    "login_redirect",
    "login_unavailable",
    "unauthenticated",
]

LOGIN_PATH = "/cdn-cgi/access/login"


@dataclass(frozen=True, slots=True)
class AccessPage(ErrorPage):
    """An HTML answer with extra headers (``Location``)."""

    headers: tuple[tuple[str, str], ...] = ()

    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        return self.headers


@dataclass(frozen=True, slots=True)
class JsonAnswer(ErrorPage):
    """A JSON answer: ``body`` as given (the key set, a 401/403 for API clients)."""

    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = ()
    content_type: ClassVar[str] = "application/json"

    def render(self, host: str, ray: str) -> bytes:
        return self.body

    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        return self.headers


def _json(status: int, what: dict[str, Any], **headers: str) -> JsonAnswer:
    body = json.dumps(what, separators=(",", ":")).encode() + b"\n"
    return JsonAnswer(
        status,
        str(status),
        "",
        "",
        body=body,
        headers=(("Cache-Control", "no-store"), *headers.items()),
    )


def key_set_answer(keys: dict[str, Any]) -> JsonAnswer:
    """``/cdn-cgi/access/certs``: public, cacheable for a few minutes (keys rotate with
    overlap, so a cached set still verifies every live token for long after)."""
    body = json.dumps(keys, separators=(",", ":")).encode()
    return JsonAnswer(
        200, "200", "", "", body=body, headers=(("Cache-Control", "public, max-age=300"),)
    )


def wants_html(accept: str) -> bool:
    """A browser navigation (``Accept: text/html``) rather than an API client."""
    return "text/html" in accept.lower()


def login_redirect(host: str, path: str, app_name: str, aud: str) -> AccessPage:
    """302 to the login page on the same host, with where to return to (same-host path
    only: the login flow refuses any other)."""
    location = f"{LOGIN_PATH}/{host}?kid={aud}&redirect_url={quote(path, safe='')}"
    return AccessPage(
        302,
        "302",
        "Sign in required",
        f"{app_name} is protected by Access: sign in to continue.",
        headers=(("Location", location), ("Cache-Control", "no-store")),
    )


def unauthenticated(app_name: str) -> JsonAnswer:
    """401 for an API client with no valid session or service token."""
    return _json(
        401,
        {
            "error": "unauthenticated",
            "message": f"{app_name} is protected by Access: send a valid CF_Authorization cookie,"
            " cf-access-token header, or CF-Access-Client-Id and CF-Access-Client-Secret",
        },
    )


def denied(app_name: str, browser: bool) -> ErrorPage:
    """403: identified, and not allowed."""
    if not browser:
        return _json(
            403,
            {
                "error": "forbidden",
                "message": f"you are not allowed to reach {app_name}; ask its administrator",
            },
        )
    return AccessPage(
        403,
        "403",
        f"Access denied: {app_name}",
        f"You are signed in, but you are not allowed to reach {app_name}. If you think you "
        "should be, ask the application's administrator and give them the Ray ID below; or "
        "sign out and sign in with another account (/cdn-cgi/access/logout).",
        headers=(("Cache-Control", "no-store"),),
    )


def login_unavailable(host: str, path: str) -> ErrorPage:
    """The login flow's stand-in where none is set (:attr:`AccessGate.login_flow`; the
    edge sets :class:`adit.edge.access.login_flow.LoginFlow`)."""
    return AccessPage(
        501,
        "501",
        "Sign-in is not available on this edge yet",
        "This application is protected by Access, but this edge cannot sign browsers in yet. "
        "Machines can use a service token (CF-Access-Client-Id and CF-Access-Client-Secret).",
        headers=(("Cache-Control", "no-store"),),
    )
