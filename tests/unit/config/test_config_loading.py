"""Loading config.yml: search path, errors with locations and lines, warnings, extras."""

from __future__ import annotations

from pathlib import Path

import pytest

from adit.config.duration import Duration
from adit.config.errors import ConfigError, ConfigNotFoundError, ConfigParseError, IngressError
from adit.config.load import find_config_path, load_config, search_directories


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_search_directories_order(tmp_path: Path) -> None:
    assert search_directories(tmp_path) == [
        tmp_path / ".adit",
        Path("/etc/adit"),
        tmp_path / ".cloudflared",
        tmp_path / ".cloudflare-warp",
        tmp_path / "cloudflare-warp",
        Path("/etc/cloudflared"),
        Path("/usr/local/etc/cloudflared"),
    ]


def test_find_config_path_first_existing_wins(tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    assert find_config_path(None, dirs) is None
    write(dirs[1], "{}", "config.yml")
    assert find_config_path(None, dirs) == dirs[1] / "config.yml"
    write(dirs[0], "{}", "config.yaml")
    assert find_config_path(None, dirs) == dirs[0] / "config.yaml"
    write(dirs[0], "{}", "config.yml")
    assert find_config_path(None, dirs) == dirs[0] / "config.yml"
    assert find_config_path("/explicit.yml", dirs) == Path("/explicit.yml")


def test_full_file_is_typed(tmp_path: Path) -> None:
    loaded = load_config(
        write(
            tmp_path,
            "tunnel: 1234\ngrace-period: 1m30s\nedge: 127.0.0.1:7844\nha-connections: 2\n"
            "no-autoupdate: true\ntag: [a=b]\nwarp-routing:\n  maxActiveFlows: 3\n"
            "ingress:\n  - service: http_status:404\n",
        )
    )
    config = loaded.config
    assert config.tunnel == "1234"  # scalar kept as written, as Go's yaml does
    assert config.grace_period == Duration.parse("1m30s")
    assert config.grace_period is not None and config.grace_period.seconds == 90
    assert config.edge_addresses() == ["127.0.0.1:7844"]
    assert config.tags() == ["a=b"]
    assert config.ha_connections == 2
    assert config.no_autoupdate is True
    assert config.warp_routing is not None and config.warp_routing.max_active_flows == 3
    assert loaded.warnings == ()
    assert not loaded.empty


def test_unknown_top_level_keys_are_kept_silently(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, "mystery: 1\nother: [x]\n"))
    assert loaded.warnings == ()
    assert dict(loaded.extra) == {"mystery": 1, "other": ["x"]}


def test_unknown_nested_keys_are_warnings_with_lines(tmp_path: Path) -> None:
    loaded = load_config(
        write(
            tmp_path,
            "originRequest:\n  bogus: 1\ningress:\n  - service: x://y\n"
            "    servce: typo\n    originRequest:\n      access:\n        team: t\n",
        )
    )
    assert [str(w) for w in loaded.warnings] == [
        "line 2: field bogus not found in type config.OriginRequestConfig",
        "line 5: field servce not found in type config.UnvalidatedIngressRule",
        "line 8: field team not found in type config.AccessConfig",
    ]
    assert [w.location for w in loaded.warnings] == [
        "originRequest.bogus",
        "ingress[0].servce",
        "ingress[0].originRequest.access.team",
    ]
    assert loaded.warnings_text().startswith("yaml: unmarshal errors:\n  line 2: field bogus")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_no_config(tmp_path: Path, text: str) -> None:
    loaded = load_config(write(tmp_path, text))
    assert loaded.empty
    assert loaded.config.ingress is None


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigNotFoundError) as caught:
        load_config(tmp_path / "nope.yml")
    assert str(caught.value) == f"open {tmp_path / 'nope.yml'}: no such file or directory"
    with pytest.raises(ConfigNotFoundError, match="is a directory"):
        load_config(tmp_path)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "ingress:\n  - service: a\n    x: [1,\n")
    with pytest.raises(ConfigParseError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"error parsing YAML in config file at {path}: yaml: line")
    assert caught.value.line is not None


@pytest.mark.parametrize(
    ("text", "location", "line", "fragment"),
    [
        ("retries: many\n", "retries", 1, "Expected `int`, got `str`"),
        ("a: 1\nmetrics: 8080\n", "metrics", 2, "Expected `str`, got `int`"),
        ("grace-period: 30\n", "grace-period", 1, 'like "30s"'),
        ("grace-period: 1y\n", "grace-period", 1, 'time: unknown unit "y" in duration "1y"'),
        (
            "ingress:\n  - service: a\n  - service: b\n    originRequest:\n      tlsTimeout: 5\n",
            "ingress[1].originRequest.tlsTimeout",
            5,
            "got int",
        ),
        (
            "originRequest:\n  ipRules:\n    - prefix: 10.0.0.0/8\n      ports: [a]\n",
            "originRequest.ipRules[0].ports[0]",
            4,
            "Expected `int`, got `str`",
        ),
        ("warp-routing:\n  maxActiveFlows: -1\n", "warp-routing.maxActiveFlows", 2, ">= 0"),
        ("ingress: {}\n", "ingress", 1, "Expected `array`, got `object`"),
    ],
)
def test_type_errors_name_location_and_line(
    tmp_path: Path, text: str, location: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigParseError) as caught:
        load_config(path)
    error = caught.value
    assert (error.location, error.line) == (location, line)
    assert fragment in error.message
    assert str(error).startswith(
        f"error parsing YAML in config file at {path}: line {line}: {location}: "
    )


def test_ingress_errors_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ingress:\n  - hostname: a.example.com\n    service: http://x\n"
        "  - hostname: b.example.com\n    service: localhost:80\n  - service: http_status:404\n",
    )
    loaded = load_config(path)
    with pytest.raises(ConfigError) as caught:
        loaded.parse_ingress()
    error = caught.value
    assert not isinstance(error, IngressError)
    assert (error.location, error.line) == ("ingress[1].service", 5)
    assert str(error) == (
        f"{path}:5: ingress[1].service: localhost:80 is an invalid address, please make sure "
        "it has a scheme and a hostname"
    )
    assert isinstance(error.__cause__, IngressError)


@pytest.mark.parametrize(
    ("rules", "location", "line"),
    [
        (
            "  - hostname: a:1\n    service: http://x\n  - service: a://b\n",
            "ingress[0].hostname",
            2,
        ),
        ("  - service: http://x\n    path: '['\n", "ingress[0].path", 3),
        ("  - service: http://x\n  - service: a://b\n", "ingress[0]", 2),
    ],
)
def test_hostname_and_path_error_lines(
    tmp_path: Path, rules: str, location: str, line: int
) -> None:
    loaded = load_config(write(tmp_path, "ingress:\n" + rules))
    with pytest.raises(ConfigError) as caught:
        loaded.parse_ingress()
    assert (caught.value.location, caught.value.line) == (location, line)


def test_config_error_str_shapes() -> None:
    assert str(ConfigError("c.yml", "a.b", "bad", line=3)) == "c.yml:3: a.b: bad"
    assert str(ConfigError("c.yml", "", "bad")) == "c.yml: bad"
    assert str(ConfigError("c.yml", "a", "bad", "try x")) == "c.yml: a: bad\nfix: try x"
    assert str(IngressError("exact message", "ingress[0]")) == "exact message"
