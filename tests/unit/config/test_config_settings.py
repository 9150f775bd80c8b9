"""Value precedence: command-line flag > environment variable > config file > default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from adit.config.duration import Duration
from adit.config.load import LoadedConfig, load_config
from adit.config.model import ConfigFile
from adit.config.settings import DURATION, effective_value, file_value


def resolve(
    args: list[str], env: dict[str, str], config: ConfigFile | LoadedConfig | None
) -> dict[str, Any]:
    """Run a tiny group/command pair and return the effective values it saw."""
    seen: dict[str, Any] = {}

    @click.group()
    @click.option("--metrics", envvar="TUNNEL_METRICS", default="localhost:0")
    def group(metrics: str) -> None:
        pass

    @group.command()
    @click.option("--grace-period", type=DURATION, envvar="TUNNEL_GRACE_PERIOD", default="30s")
    @click.option("--ha-connections", type=int, default=4)
    @click.option("--no-autoupdate", is_flag=True, envvar="NO_AUTOUPDATE")
    @click.option("--loglevel", default="info")
    @click.pass_context
    def run(ctx: click.Context, /, **_: Any) -> None:
        for name in ("grace_period", "ha_connections", "no_autoupdate", "loglevel", "metrics"):
            seen[name] = effective_value(ctx, name, config)
        seen["mystery"] = effective_value(ctx, "mystery", config)

    result = CliRunner().invoke(group, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen


FILE = ConfigFile(
    grace_period=Duration.parse("1m"),
    ha_connections=2,
    no_autoupdate=True,
    loglevel="",  # empty file values do not apply
    metrics="127.0.0.1:9000",
)


def test_defaults_when_nothing_is_set() -> None:
    seen = resolve(["run"], {}, None)
    assert seen["grace_period"] == Duration.parse("30s")
    assert (seen["ha_connections"], seen["no_autoupdate"], seen["loglevel"]) == (4, False, "info")
    assert seen["metrics"] == "localhost:0"


def test_file_beats_default() -> None:
    seen = resolve(["run"], {}, FILE)
    assert seen["grace_period"] == Duration.parse("1m")
    assert (seen["ha_connections"], seen["no_autoupdate"]) == (2, True)
    assert seen["loglevel"] == "info"
    assert seen["metrics"] == "127.0.0.1:9000"  # declared on the parent group


def test_env_beats_file() -> None:
    env = {"TUNNEL_GRACE_PERIOD": "5s", "TUNNEL_METRICS": "127.0.0.1:1"}
    seen = resolve(["run"], env, FILE)
    assert seen["grace_period"] == Duration.parse("5s")
    assert seen["metrics"] == "127.0.0.1:1"
    assert seen["ha_connections"] == 2


def test_flag_beats_env_and_file() -> None:
    env = {"TUNNEL_GRACE_PERIOD": "5s"}
    seen = resolve(
        ["--metrics", "127.0.0.1:2", "run", "--grace-period", "2m", "--ha-connections", "1"],
        env,
        FILE,
    )
    assert seen["grace_period"] == Duration.parse("2m")
    assert seen["ha_connections"] == 1
    assert seen["metrics"] == "127.0.0.1:2"


def test_unknown_parameter_reads_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("mystery: 42\nha-connections: 3\n", encoding="utf-8")
    loaded = load_config(path)
    seen = resolve(["run"], {}, loaded)
    assert seen["mystery"] == 42
    assert seen["ha_connections"] == 3
    assert file_value(loaded, "ha-connections") == 3
    assert file_value(loaded.config, "mystery") is None
    assert file_value(None, "ha-connections") is None


def test_duration_type_rejects_bad_values() -> None:
    @click.command()
    @click.option("--grace-period", type=DURATION)
    def command(grace_period: Duration) -> None:
        pass

    result = CliRunner().invoke(command, ["--grace-period", "5"])
    assert result.exit_code == 2
    assert 'time: missing unit in duration "5"' in result.output


@pytest.mark.parametrize("value", ["30s", Duration.parse("30s")])
def test_duration_type_accepts_strings_and_durations(value: str | Duration) -> None:
    assert DURATION.convert(value, None, None) == Duration.parse("30s")
