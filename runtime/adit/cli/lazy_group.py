"""A click group whose subcommands are imported when first used.

``adit tunnel run`` starts the connector; it should not pay for importing the edge, the
management commands or ``access`` (cryptography, http.client, yaml...) before its first
connection. Each subcommand is named here as ``module:attribute`` and imported only when
click asks for it; ``--help`` imports them all to list them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """A :class:`click.Group` with ``lazy_commands``: ``{name: "module:attribute"}``.

    The attribute is a command or a list of commands (then the one called ``name`` is used).
    A module that is not installed hides its commands; so does any import error of a module in
    ``optional_modules`` (the edge, absent from a connector-only install).
    """

    def __init__(
        self,
        *args: Any,
        lazy_commands: Mapping[str, str] | None = None,
        optional_modules: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})
        self.optional_modules = optional_modules

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(self.commands)
        for name in self.lazy_commands:
            if self._load(name) is not None:
                names.add(name)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.commands.get(cmd_name) or self._load(cmd_name)

    def _load(self, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        spec = self.lazy_commands.get(name)
        if spec is None:
            return None
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = isinstance(exc, ModuleNotFoundError) and exc.name == module_name
            if missing or module_name in self.optional_modules:
                return None
            raise
        found = getattr(module, attribute)
        candidates = found if isinstance(found, list | tuple) else [found]
        for command in candidates:
            if len(candidates) == 1 or command.name == name:
                self.add_command(command, name)
                return command  # type: ignore[no-any-return]
        return None
