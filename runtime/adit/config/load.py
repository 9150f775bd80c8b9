"""Finding and loading ``config.yml``: the search path, decoding, unused-key warnings.

Stable API (used by the CLI, the supervisor and the workers):

* :func:`search_directories` / :func:`find_config_path` — where a config is looked for.
* :func:`load_config` → :class:`LoadedConfig` — one file read, decoded and type-checked.
  It does **not** validate ingress; call :func:`adit.config.ingress.parse_ingress` (or
  :meth:`LoadedConfig.parse_ingress` for errors that point at a line).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec
import yaml

from adit.config.errors import ConfigError, ConfigNotFoundError, ConfigParseError, IngressError
from adit.config.model import ConfigFile, duration_hook
from adit.config.source import (
    UnusedKey,
    format_location,
    line_of,
    normalise,
    parse_location,
    parse_yaml,
)

if TYPE_CHECKING:
    from adit.config.ingress import Ingress

__all__ = [
    "CONFIG_FILE_NAMES",
    "LoadedConfig",
    "find_config_path",
    "load_config",
    "search_directories",
]

CONFIG_FILE_NAMES = ("config.yml", "config.yaml")


def search_directories(home: Path | None = None) -> list[Path]:
    """Directories searched for a config, in order: adit's own, then cloudflared's."""
    base = Path.home() if home is None else home
    return [
        base / ".adit",
        Path("/etc/adit"),
        base / ".cloudflared",
        base / ".cloudflare-warp",
        base / "cloudflare-warp",
        Path("/etc/cloudflared"),
        Path("/usr/local/etc/cloudflared"),
    ]


def find_config_path(explicit: str | None, directories: list[Path] | None = None) -> Path | None:
    """``explicit`` when given (even if missing: loading then fails), else the first
    ``config.yml``/``config.yaml`` found in ``directories`` (default :func:`search_directories`).
    """
    if explicit:
        return Path(explicit)
    for directory in search_directories() if directories is None else directories:
        for name in CONFIG_FILE_NAMES:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


@dataclass(frozen=True)
class LoadedConfig:
    """One decoded config file.

    ``config`` holds every modelled key; ``extra`` the unknown top-level keys (ignored, as
    cloudflared ignores them); ``warnings`` the unknown keys inside modelled structs, in file
    order. ``empty`` is true for a file with no YAML document, which behaves as "no config".
    """

    path: Path
    config: ConfigFile
    warnings: tuple[UnusedKey, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    empty: bool = False
    node: yaml.Node | None = field(default=None, repr=False, compare=False)

    def warnings_text(self) -> str:
        """The warnings as cloudflared prints them (Go yaml's ``unmarshal errors`` block)."""
        if not self.warnings:
            return ""
        return "yaml: unmarshal errors:\n" + "\n".join(f"  {w}" for w in self.warnings)

    def line_of(self, location: str, *, key: bool = False) -> int | None:
        """1-based line of ``location`` (``ingress[1].service``) in the file, if known."""
        return line_of(self.node, parse_location(location), key=key)

    def validate_ingress(self) -> Ingress:
        """This file's ingress rules, validated; raises :class:`IngressError` (see
        :meth:`locate`)."""
        from adit.config.ingress import parse_ingress
        from adit.config.rule_keys import check_rule_keys

        check_rule_keys(self)  # a misspelt `service:` before its rule's empty service
        return parse_ingress(self.config.ingress or [], self.config.origin_request)

    def locate(self, error: IngressError) -> ConfigError:
        """``error`` as a :class:`ConfigError` naming this file and the line of its location."""
        line = self.line_of(error.location) if error.location else None
        return error.located(self.path, line)

    def parse_ingress(self) -> Ingress:
        """Validate this file's ingress; errors are :class:`ConfigError` with a line."""
        try:
            return self.validate_ingress()
        except IngressError as exc:
            raise self.locate(exc) from exc


def load_config(path: Path | str) -> LoadedConfig:
    """Read and decode ``path``.

    Raises :class:`ConfigNotFoundError` when the file cannot be read and
    :class:`ConfigParseError` for YAML syntax errors and wrongly typed values (with the
    location and line). Unknown keys are warnings, never errors.
    """
    path = Path(path)
    text = _read(path)
    data, node = parse_yaml(text, path)
    if data is None:
        return LoadedConfig(path, ConfigFile(), empty=True)
    if not isinstance(data, dict):
        line = None if node is None else int(node.start_mark.line) + 1
        kind = "a list" if isinstance(data, list) else "a scalar"
        message = f"the file must be a mapping of keys, not {kind}"
        raise ConfigParseError(path, "", message, line=line)
    unused: list[UnusedKey] = []
    extra: dict[str, Any] = {}
    prepared = normalise(data, node, ConfigFile, (), unused, extra=extra)
    try:
        config = msgspec.convert(prepared, ConfigFile, dec_hook=duration_hook(json_seconds=False))
    except msgspec.ValidationError as exc:
        raise _located_error(path, node, str(exc)) from None
    return LoadedConfig(
        path,
        config,
        tuple(sorted(unused, key=lambda w: w.line)),
        MappingProxyType(extra),
        node=node,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = f"open {path}: no such file or directory"
    except IsADirectoryError:
        message = f"read {path}: is a directory"
    except PermissionError:
        message = f"open {path}: permission denied"
    except UnicodeDecodeError as exc:
        raise ConfigParseError(path, "", f"yaml: invalid UTF-8: {exc.reason}") from None
    except OSError as exc:
        message = f"open {path}: {os.strerror(exc.errno or 0).lower()}"
    raise ConfigNotFoundError(path, "", message)


def _located_error(path: Path, node: yaml.Node | None, text: str) -> ConfigParseError:
    """A msgspec ``"<message> - at `$.a[0].b`"`` error as a located :class:`ConfigParseError`."""
    message, _, where = text.rpartition(" - at ")
    if not message:
        return ConfigParseError(path, "", text)
    parts = parse_location(where.strip("`"))
    message = message.replace(" | null`", "`")  # every key is optional; "null" is noise here
    return ConfigParseError(path, format_location(parts), message, line=line_of(node, parts))
