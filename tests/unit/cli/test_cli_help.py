"""Every ``--help`` of the command tree: plain text, argument names, ``ingress`` listed."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from adit.cli.root import cli


def _helps() -> Iterator[tuple[str, click.Command, str]]:
    def walk(
        command: click.Command, path: list[str], parent: click.Context | None
    ) -> Iterator[tuple[str, click.Command, str]]:
        ctx = click.Context(command, info_name=path[-1], parent=parent)
        yield " ".join(path), command, command.get_help(ctx)
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not (len(path) == 1 and name == "edge"):
                    yield from walk(sub, [*path, name], ctx)

    yield from walk(cli, ["adit"], None)


_ALL = list(_helps())


@pytest.mark.parametrize(("path", "command", "text"), _ALL, ids=[p for p, _c, _t in _ALL])
def test_help_is_plain_text_with_argument_names(
    path: str, command: click.Command, text: str
) -> None:
    assert "`" not in text, text
    assert '"' not in text, text
    if not isinstance(command, click.Group):
        assert "[ARGS]" not in text.splitlines()[0], text


def test_usage_names_the_arguments() -> None:
    usage = {path: text.splitlines()[0] for path, _c, text in _ALL}
    assert usage["adit tunnel run"] == "Usage: adit tunnel run [OPTIONS] [TUNNEL]"
    assert (
        usage["adit tunnel route dns"] == "Usage: adit tunnel route dns [OPTIONS] TUNNEL HOSTNAME"
    )
    assert usage["adit tunnel create"] == "Usage: adit tunnel create [OPTIONS] NAME"


def test_ingress_is_listed_under_tunnel() -> None:
    text = {p: t for p, _c, t in _ALL}["adit tunnel"]
    assert "  ingress  " in text
