"""YAML text → plain data plus the node tree, so every location can be mapped to a line.

The loader decodes like cloudflared's lenient pass and reports what its strict pass would
report: keys unknown to a modelled struct become :class:`UnusedKey` warnings (cloudflared's
"unused keys" list), ``null`` values mean "unset", and scalars given for string keys keep
their YAML spelling (``hostname: 1234`` is the string ``"1234"``, as Go's yaml does).
Unknown *top-level* keys are flag names cloudflared swallows silently; they are returned
separately.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from adit.config.errors import ConfigParseError
from adit.config.model import GO_TYPE_NAMES, ConfigFile

# yaml is imported by the functions that parse: workers use this module's location helpers
# and rebuild their rules from msgspec snapshots, never from YAML text.
if TYPE_CHECKING:
    import yaml

__all__ = [
    "Location",
    "UnusedKey",
    "format_location",
    "line_of",
    "normalise",
    "parse_location",
    "parse_yaml",
]

Location = tuple[str | int, ...]
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


class UnusedKey(msgspec.Struct, frozen=True):
    """A key that no modelled struct knows, e.g. a typo in ``originRequest``."""

    line: int
    key: str
    type_name: str  # cloudflared's Go type name, e.g. ``config.OriginRequestConfig``
    location: str

    def __str__(self) -> str:
        return f"line {self.line}: field {self.key} not found in type {self.type_name}"


@functools.cache
def _fields_by_key(target: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    # msgspec.structs.fields() resolves every type hint on each call (~3 ms for ConfigFile),
    # and a config file visits the same few structs again and again.
    return {f.encode_name: f for f in msgspec.structs.fields(target)}


def parse_yaml(text: str, path: Path) -> tuple[Any, yaml.Node | None]:
    """The first YAML document of ``text`` as data and as a node tree (``None`` when empty)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_node() if loader.check_node() else None
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line = None if mark is None else mark.line + 1
        where = "" if line is None else f"line {line}: "
        raise ConfigParseError(path, "", f"yaml: {where}{problem}", line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigParseError(path, "", f"yaml: {exc}") from None
    finally:
        loader.dispose()
    return data, node


def format_location(parts: Location) -> str:
    """``("ingress", 2, "service")`` → ``ingress[2].service``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def parse_location(text: str) -> Location:
    """The inverse of :func:`format_location`; also accepts msgspec's ``$.a[0].b`` form."""
    text = text.removeprefix("$")
    if text and text[0] not in ".[":
        text = "." + text
    parts: list[str | int] = []
    for match in _PATH_PART.finditer(text):
        key, index = match.groups()
        parts.append(key if key is not None else int(index))
    return tuple(parts)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """``(key_node, value_node)`` of ``part`` in ``node`` (key node = item node for lists)."""
    import yaml

    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                return key_node, value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item: yaml.Node = node.value[part]
        return item, item
    return None


def line_of(root: yaml.Node | None, parts: Location, *, key: bool = False) -> int | None:
    """1-based line of the value at ``parts`` (of its key with ``key=True``).

    When the path does not exist (a missing key) the line of the deepest existing node is
    returned, which is where the missing key belongs.
    """
    if root is None:
        return None
    node = root
    for part in parts:
        found = _child(node, part)
        if found is None:
            break
        node = found[0] if key and part == parts[-1] else found[1]
    return int(node.start_mark.line) + 1


def _struct_of(annotation: Any) -> tuple[str, Any]:
    """Classify a field type: ``("struct", T)``, ``("list", T)``, ``("str", None)`` or other."""
    options = (
        typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    )
    for option in options:
        if isinstance(option, type) and issubclass(option, msgspec.Struct):
            return "struct", option
        if typing.get_origin(option) is list:
            (item,) = typing.get_args(option)
            if isinstance(item, type) and issubclass(item, msgspec.Struct):
                return "list", item
    if str in options and len([o for o in options if o is not type(None)]) == 1:
        return "str", None
    return "other", None


def normalise(
    data: Any,
    node: yaml.Node | None,
    target: type[msgspec.Struct],
    parts: Location,
    unused: list[UnusedKey],
    *,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Prepare ``data`` (decoded from ``node``) for ``msgspec.convert(..., target)``.

    Drops ``null`` values and unknown keys (recording them in ``unused``, or in ``extra`` for
    the top level), and turns scalars given for plain string keys into their YAML text.
    Anything of the wrong shape is passed through for msgspec to reject with a location.
    """
    if not isinstance(data, dict):
        return data
    fields = _fields_by_key(target)
    result: dict[str, Any] = {}
    for key, value in data.items():
        found = None if node is None else _child(node, str(key))
        key_node, value_node = found if found is not None else (None, None)
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            if target is ConfigFile:
                if extra is not None:
                    extra[str(key)] = value
                continue
            line = 0 if key_node is None else int(key_node.start_mark.line) + 1
            unused.append(
                UnusedKey(line, str(key), GO_TYPE_NAMES[target], format_location((*parts, key)))
            )
            continue
        if value is not None:
            coerce = target is not ConfigFile or key == "tunnel"
            result[key] = _normalise_value(
                value, value_node, field.type, (*parts, key), unused, coerce=coerce
            )
    return result


def _normalise_value(
    value: Any,
    node: yaml.Node | None,
    annotation: Any,
    parts: Location,
    unused: list[UnusedKey],
    *,
    coerce: bool,
) -> Any:
    import yaml

    kind, inner = _struct_of(annotation)
    if kind == "struct":
        return normalise(value, node, inner, parts, unused)
    if kind == "list" and isinstance(value, list):
        items = node.value if isinstance(node, yaml.SequenceNode) else []
        return [
            normalise(
                {} if item is None else item,
                items[index] if index < len(items) else None,
                inner,
                (*parts, index),
                unused,
            )
            for index, item in enumerate(value)
        ]
    if (
        kind == "str"
        and coerce
        and isinstance(value, int | float | bool)
        and isinstance(node, yaml.ScalarNode)
    ):
        return node.value
    return value
