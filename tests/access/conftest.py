"""The Access tests' real services: one browser per module (access_support.browser)."""

from __future__ import annotations

from access_support.browser import browser_context, chromium, screens

__all__ = ["browser_context", "chromium", "screens"]
