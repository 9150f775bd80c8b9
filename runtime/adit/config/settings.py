"""Effective setting values: command-line flag > environment variable > config file > default.

cloudflared applies a file key to a flag only when the flag was neither given on the command
line nor through one of its env vars, and only when the file value is non-empty. Click
records where each parameter value came from (``ctx.get_parameter_source``), so the rule is
a few lines here instead of a second flag parser.

Deliberate difference: a boolean ``false`` in the file is applied (cloudflared's altsrc only
applies ``true``, so ``management-diagnostics: false`` would be ignored there).
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from adit.config.duration import Duration
from adit.config.load import LoadedConfig
from adit.config.model import ConfigFile

__all__ = ["DURATION", "DurationType", "effective_value", "file_value"]

_EXPLICIT = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)
# The names without msgspec.structs.fields(), which resolves every type hint (~3 ms a call).
_KEY_TO_ATTRIBUTE = dict(
    zip(ConfigFile.__struct_encode_fields__, ConfigFile.__struct_fields__, strict=True)
)


class DurationType(click.ParamType[Duration, "str | Duration"]):
    """A click parameter type for Go duration strings (``30s``, ``1m30s``) → :class:`Duration`."""

    name = "duration"

    def convert(
        self, value: str | Duration, param: click.Parameter | None, ctx: click.Context | None
    ) -> Duration:
        if isinstance(value, Duration):
            return value
        try:
            return Duration.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()


def file_value(config: ConfigFile | LoadedConfig | None, key: str) -> Any:
    """The value of top-level ``key`` (flag spelling, e.g. ``grace-period``) or ``None``.

    Keys that the model does not know are looked up in the loaded file's extra keys.
    """
    if config is None:
        return None
    loaded = config if isinstance(config, LoadedConfig) else None
    model = loaded.config if loaded is not None else config
    assert isinstance(model, ConfigFile)
    attribute = _KEY_TO_ATTRIBUTE.get(key)
    if attribute is not None:
        return getattr(model, attribute)
    return None if loaded is None else loaded.extra.get(key)


def _owners(ctx: click.Context, name: str) -> list[tuple[click.Context, click.Parameter]]:
    """Every context (this one, then its parents) whose command declares parameter ``name``."""
    found: list[tuple[click.Context, click.Parameter]] = []
    current: click.Context | None = ctx
    while current is not None:
        for param in current.command.params:
            if param.name == name:
                found.append((current, param))
                break
        current = current.parent
    return found


def _file_keys(param: click.Parameter) -> list[str]:
    """The config keys of a flag: its long names without the dashes, the name first (altsrc
    also reads a flag from the file under its aliases, e.g. ``cred-file``)."""
    keys = [opt[2:] for opt in param.opts if opt.startswith("--")]
    return keys or [str(param.name).replace("_", "-")]


def effective_value(
    ctx: click.Context,
    name: str,
    config: ConfigFile | LoadedConfig | None,
    *,
    key: str | None = None,
) -> Any:
    """The value of parameter ``name`` with flag > env > config file > default precedence.

    ``name`` is the click parameter name (``grace_period``); the file keys default to the
    flag's long names (``grace-period``) and can be given as ``key``. The parameter may be
    declared on ``ctx``'s command and on any parent group. File values are the modelled types
    (durations as :class:`Duration`); use :data:`DURATION` for duration flags so both agree.
    """
    owners = _owners(ctx, name)
    if not owners:
        return file_value(config, key or name.replace("_", "-"))
    # The tunnel flags are declared at every level (``adit --flag tunnel --flag run --flag``):
    # the innermost command line wins, then the environment, then the file, then the default.
    for source in _EXPLICIT:
        for owner, _param in owners:
            if owner.get_parameter_source(name) == source:
                return owner.params.get(name)
    innermost, param = owners[0]
    for file_key in [key] if key else _file_keys(param):
        value = file_value(config, file_key)
        if value is not None and value not in ("", []):
            return _typed(value, param, innermost, f"{_where(config)}{file_key}")
    return innermost.params.get(name)


def _where(config: ConfigFile | LoadedConfig | None) -> str:
    return f"{config.path}: " if isinstance(config, LoadedConfig) else ""


def _typed(value: Any, param: click.Parameter, ctx: click.Context, where: str) -> Any:
    """A file value of a key the model does not know (kept as YAML gave it: ``"20s"``) in
    the flag's type, as the modelled keys already are; a bad one names the file and key."""
    if isinstance(value, str) and not param.multiple and param.type is not click.STRING:
        try:
            return param.type.convert(value, param, ctx)
        except click.BadParameter as exc:
            raise click.UsageError(f"{where}: {exc.message}", ctx) from None
    return value
