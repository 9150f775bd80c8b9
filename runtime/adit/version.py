"""The one version source: the CLI, the wheel and the distro packages all read this."""

from __future__ import annotations

__version__ = "2026.11.0"
