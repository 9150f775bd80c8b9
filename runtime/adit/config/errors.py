"""Config error taxonomy: every error names its file, its location and, where known, its line.

* :class:`ConfigError` — a problem in a config file (or in remote/JSON config when ``path`` is
  ``None``). ``str()`` is ``<file>:<line>: <location>: <message>``, then ``fix: <hint>`` on a
  line of its own when there is a hint.
* :class:`ConfigNotFoundError` — an explicit ``--config`` path that cannot be opened.
* :class:`ConfigParseError` — YAML syntax or type errors; rendered the way cloudflared renders
  them (``error parsing YAML in config file at <path>: ...``) so ``ingress validate`` matches.
* :class:`IngressError` — an ingress validation failure. Its ``str()`` is exactly cloudflared's
  message (what ``ingress validate`` prints after ``Validation failed:``); :meth:`located`
  turns it into a :class:`ConfigError` pointing at the file and line.

All are *permanent*: retrying with the same input fails the same way.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError", "ConfigNotFoundError", "ConfigParseError", "IngressError"]


class ConfigError(Exception):
    """A config problem at ``location`` (e.g. ``ingress[2].service``) of ``path``."""

    def __init__(
        self,
        path: Path | str | None,
        location: str,
        message: str,
        hint: str = "",
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.location = location
        self.message = message
        self.hint = hint
        self.line = line

    def __str__(self) -> str:
        if self.path is None:
            text = f"{self.location}: {self.message}" if self.location else self.message
        else:
            where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
            text = (
                f"{where}: {self.location}: {self.message}"
                if self.location
                else (f"{where}: {self.message}")
            )
        # "fix:" keeps the hint apart from the message once a log line flattens the newline.
        return f"{text}\nfix: {self.hint}" if self.hint else text


class ConfigNotFoundError(ConfigError):
    """An explicitly named config file that cannot be read (cloudflared: ``open <p>: ...``)."""

    def __str__(self) -> str:
        return self.message


class ConfigParseError(ConfigError):
    """The file is not valid YAML, or a value has the wrong type.

    ``detail`` is the part after cloudflared's prefix, e.g. ``yaml: line 3: ...`` or
    ``line 5: originRequest.connectTimeout: ...``.
    """

    @property
    def detail(self) -> str:
        """The error without the ``error parsing YAML in config file at <path>:`` prefix."""
        parts = []
        if self.line is not None and not self.message.startswith("yaml:"):
            parts.append(f"line {self.line}")
        if self.location:
            parts.append(self.location)
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        return f"error parsing YAML in config file at {self.path}: {self.detail}"


class IngressError(ConfigError):
    """An invalid ingress rule set; ``str()`` is cloudflared's exact validation message.

    ``location`` names the offending key (``ingress[1].service``) so that callers holding the
    file can point at its line with :meth:`located`.
    """

    def __init__(self, message: str, location: str = "", hint: str = "") -> None:
        super().__init__(None, location, message, hint)

    def __str__(self) -> str:
        return self.message

    def located(self, path: Path | str, line: int | None) -> ConfigError:
        """The same error as a :class:`ConfigError` of ``path`` (at ``line`` when known)."""
        return ConfigError(path, self.location, self.message, self.hint, line)
