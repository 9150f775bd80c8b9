"""The pages Access shows a browser: login (choose a provider, e-mail a PIN, enter the PIN) and
denial (403), plus the two checks every form and redirect goes through.

Pages are plain server-rendered HTML: no JavaScript, no external resources, every interpolated
value escaped with :func:`html.escape`. A denial names the application and what to do, never
which policy decided (that goes to the access log only).

- :func:`safe_return_path`: where a visitor may be sent back after login: a path on the same
  host only ("/x?y"), never "//evil.example", "/\\evil.example", "https://evil.example" or a
  URL with control characters (no open redirect).
- :func:`csrf_token` / :func:`csrf_valid`: forms carry an HMAC of the browser's pre-login
  cookie (double submit, signed), so a page on another site cannot post a login (login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "LOGIN_PATH",
    "PAGE_HEADERS",
    "ProviderChoice",
    "cookie_header",
    "csrf_token",
    "csrf_valid",
    "denied_page",
    "login_page",
    "pin_entry_page",
    "safe_return_path",
]

LOGIN_PATH = "/cdn-cgi/access/login"
#: Return paths longer than this are cut to "/" (they travel in a form and a cookie).
MAX_RETURN_PATH = 2048

#: Headers every Access page is sent with: never cached, never framed (clickjacking), no
#: scripts or outside resources at all.
PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'",
    ),
    ("referrer-policy", "no-referrer"),
)

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;color:#222}"
    "main{max-width:26rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;"
    "box-shadow:0 1px 4px #0002}h1{font-size:1.3rem}button,input{font-size:1rem;padding:.5rem;"
    "width:100%;box-sizing:border-box;margin:.3rem 0}.error{color:#a00}.small{color:#666;"
    "font-size:.85rem}hr{border:0;border-top:1px solid #ddd;margin:1.2rem 0}"
)


@dataclass(frozen=True)
class ProviderChoice:
    """One identity provider of the application, as the login page offers it."""

    id: str
    name: str
    #: "oidc" (a button leading to the provider) or "onetimepin" (an e-mail form).
    type: str


def safe_return_path(value: str | None) -> str:
    """``value`` if it is a path on this host, else "/"."""
    if not value or len(value) > MAX_RETURN_PATH:
        return "/"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value) or "\\" in value:
        return "/"
    if not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def csrf_token(key: bytes, binding: str) -> str:
    """The token a form carries for the browser whose pre-login cookie is ``binding``."""
    return hmac.new(key, b"adit-access-csrf\0" + binding.encode(), hashlib.sha256).hexdigest()


def csrf_valid(key: bytes, binding: str | None, token: str | None) -> bool:
    """Whether a posted ``token`` belongs to this browser's cookie (constant time)."""
    if not binding or not token:
        return False
    return hmac.compare_digest(csrf_token(key, binding).encode(), token.encode())


def cookie_header(
    name: str, value: str, *, path: str = "/", max_age: int | None = None, secure: bool = True
) -> str:
    """A ``Set-Cookie`` value for Access's cookies: HttpOnly (no script reads a session or
    flow id), SameSite=Lax (sent on the provider's top-level redirect back, not on cross-site
    posts), Secure unless the listener is plain HTTP, host-only (no Domain attribute)."""
    parts = [f"{name}={value}", f"Path={path}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    parts += ["HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    ).encode()


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'


def login_page(
    application: str,
    providers: Sequence[ProviderChoice],
    *,
    return_to: str,
    csrf: str,
    error: str | None = None,
) -> bytes:
    """Choose a provider: one button per OIDC provider, an e-mail form per PIN provider."""
    app = html.escape(application)
    back = safe_return_path(return_to)
    parts = [f"<h1>Sign in to {app}</h1>"]
    if error:
        parts.append(f'<p class="error" role="alert">{html.escape(error)}</p>')
    for i, provider in enumerate(providers):
        if i:
            parts.append("<hr>")
        pid = html.escape(provider.id)
        name = html.escape(provider.name)
        if provider.type == "onetimepin":
            parts.append(
                f'<form method="post" action="{LOGIN_PATH}/pin">'
                + _hidden("provider", provider.id)
                + _hidden("return_to", back)
                + _hidden("csrf", csrf)
                + f'<label for="email-{pid}">E-mail a one-time code ({name})</label>'
                + f'<input id="email-{pid}" name="email" type="email" required'
                + ' autocomplete="email" placeholder="you@example.com">'
                + '<button type="submit">Send me a code</button></form>'
            )
        else:
            parts.append(
                f'<form method="post" action="{LOGIN_PATH}/start">'
                + _hidden("provider", provider.id)
                + _hidden("return_to", back)
                + _hidden("csrf", csrf)
                + f'<button type="submit">Sign in with {name}</button></form>'
            )
    if not providers:
        parts.append("<p>No way to sign in is set up for this application. Ask its owner.</p>")
    return _page(f"Sign in · {application}", "".join(parts))


def pin_entry_page(
    application: str,
    *,
    provider: str,
    email: str,
    return_to: str,
    csrf: str,
    error: str | None = None,
) -> bytes:
    """Enter the code that was mailed to ``email``."""
    parts = [
        f"<h1>Sign in to {html.escape(application)}</h1>",
        f"<p>If {html.escape(email)} may use this application, a code is on its way there."
        " It is good for 10 minutes.</p>",
    ]
    if error:
        parts.append(f'<p class="error" role="alert">{html.escape(error)}</p>')
    parts.append(
        f'<form method="post" action="{LOGIN_PATH}/pin/verify">'
        + _hidden("provider", provider)
        + _hidden("email", email)
        + _hidden("return_to", safe_return_path(return_to))
        + _hidden("csrf", csrf)
        + '<label for="pin">Code</label>'
        + '<input id="pin" name="pin" inputmode="numeric" pattern="[0-9]{6}" maxlength="6"'
        + ' autocomplete="one-time-code" required>'
        + '<button type="submit">Sign in</button></form>'
    )
    return _page(f"Enter code · {application}", "".join(parts))


def denied_page(application: str, *, email: str | None = None, ray_id: str = "") -> bytes:
    """The 403 page: who is signed in, that this application does not let them in, and what
    to do about it; nothing about which rule said no."""
    who = f" as {html.escape(email)}" if email else ""
    parts = [
        "<h1>Access denied</h1>",
        f"<p>You are signed in{who}, but you do not have access to"
        f" <strong>{html.escape(application)}</strong>.</p>",
        "<p>If you think you should, ask the application's administrator for access, or"
        ' <a href="/cdn-cgi/access/logout">sign out</a> and sign in with another account.</p>',
    ]
    if ray_id:
        parts.append(f'<p class="small">Ray ID: {html.escape(ray_id)}</p>')
    return _page(f"Access denied · {application}", "".join(parts))
