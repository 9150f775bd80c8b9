"""originRequest resolution: defaults ← top level ← rule, key by key (§3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adit.config.errors import IngressError
from adit.config.ingress import ingress_from_cli, ingress_from_json, parse_ingress
from adit.config.load import load_config
from adit.config.model import IngressRuleConfig
from adit.config.origin import (
    AccessSettings,
    BastionService,
    HelloWorldService,
    HttpService,
    IpRule,
    OriginOptions,
    SocksProxyService,
    StatusService,
    StreamService,
    UnixService,
)

CONFIG = """\
originRequest:
  connectTimeout: 10s
  noTLSVerify: true
  httpHostHeader: top.example.com
  ipRules:
    - prefix: 192.168.0.0/16
  access:
    required: true
    teamName: top
    audTag: [top-aud]
ingress:
  - hostname: a.example.com
    service: https://localhost:8443
    originRequest:
      connectTimeout: 1m30s
      noTLSVerify: false
      access:
        teamName: rule
  - hostname: b.example.com
    service: http://localhost:8080
    originRequest:
      ipRules: []
  - hostname: c.example.com
    service: http://localhost:8080
    originRequest:
      ipRules:
        - prefix: 10.0.0.0/8
          ports: [443, 80]
        - prefix: not-a-cidr
  - hostname: socks.example.com
    service: socks-proxy
  - hostname: jump.example.com
    service: tcp://localhost:22
    originRequest:
      bastionMode: true
  - service: http_status:404
"""


@pytest.fixture
def rules(tmp_path: Path) -> list[OriginOptions]:
    path = tmp_path / "config.yml"
    path.write_text(CONFIG, encoding="utf-8")
    return [rule.options for rule in load_config(path).parse_ingress().rules]


def test_defaults_are_cloudflared_defaults() -> None:
    options = parse_ingress([IngressRuleConfig(service="http_status:404")]).rules[0].options
    assert options == OriginOptions()
    assert (options.connect_timeout, options.tls_timeout, options.tcp_keep_alive) == (30, 10, 30)
    assert (options.keep_alive_connections, options.keep_alive_timeout) == (100, 90)
    assert options.proxy_address == "127.0.0.1"


def test_rule_keys_override_top_level_key_by_key(rules: list[OriginOptions]) -> None:
    a = rules[0]
    assert a.connect_timeout == 90.0
    assert a.no_tls_verify is False
    assert a.http_host_header == "top.example.com"  # inherited
    assert a.tls_timeout == 10.0  # built-in default


def test_access_replaces_as_a_whole(rules: list[OriginOptions]) -> None:
    assert rules[0].access == AccessSettings(required=False, team_name="rule")
    assert rules[1].access == AccessSettings(required=True, team_name="top", aud_tags=("top-aud",))


def test_ip_rules_override_only_when_non_empty(rules: list[OriginOptions]) -> None:
    inherited = (IpRule(prefix="192.168.0.0/16"),)
    assert rules[1].ip_rules == inherited
    # Invalid entries of non-socks rules are dropped silently.
    assert rules[2].ip_rules == (IpRule(prefix="10.0.0.0/8", ports=(80, 443)),)


def test_socks_proxy_uses_only_its_own_ip_rules(rules: list[OriginOptions]) -> None:
    assert rules[3].ip_rules == ()


def test_bastion_mode_turns_any_url_rule_into_a_bastion(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(CONFIG, encoding="utf-8")
    ingress = load_config(path).parse_ingress()
    assert isinstance(ingress.rules[4].service, BastionService)
    assert ingress.rules[4].options.bastion_mode is True
    assert isinstance(ingress.rules[3].service, SocksProxyService)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("unix:/run/a.sock", UnixService("/run/a.sock", False, "unix:/run/a.sock")),
        ("unix+tls:/run/a.sock", UnixService("/run/a.sock", True, "unix+tls:/run/a.sock")),
        ("http_status:418", StatusService(418, "http_status:418")),
        ("http_status:+200", StatusService(200, "http_status:200")),
        ("hello_world", HelloWorldService()),
        ("hello-world", HelloWorldService()),
        ("bastion", BastionService()),
        ("socks-proxy", SocksProxyService()),
        ("http://localhost", HttpService("http", "localhost", 80, "http://localhost")),
        ("HTTPS://Origin:8443", HttpService("https", "Origin", 8443, "https://Origin:8443")),
        ("ws://localhost:81", HttpService("http", "localhost", 81, "ws://localhost:81")),
        ("wss://localhost", HttpService("https", "localhost", 443, "wss://localhost")),
        ("http://[::1]:8080", HttpService("http", "::1", 8080, "http://[::1]:8080")),
        ("http://u:p@h:1?x=1", HttpService("http", "h", 1, "http://h:1?x=1")),
        ("ssh://localhost", StreamService("ssh", "localhost", 22, "ssh://localhost:22")),
        ("rdp://h", StreamService("rdp", "h", 3389, "rdp://h:3389")),
        ("smb://h", StreamService("smb", "h", 445, "smb://h:445")),
        ("tcp://h", StreamService("tcp", "h", 7864, "tcp://h:7864")),
        ("tcp://h:5432", StreamService("tcp", "h", 5432, "tcp://h:5432")),
        ("ssh://[::1]", StreamService("ssh", "::1", 22, "ssh://[::1]:22")),
        ("foo://localhost:80", StreamService("foo", "localhost", 80, "foo://localhost:80")),
        ("foo://localhost", StreamService("foo", "localhost", 0, "foo://localhost")),
    ],
)
def test_services(service: str, expected: object) -> None:
    ingress = parse_ingress([IngressRuleConfig(service=service)])
    assert ingress.rules[0].service == expected


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ("", " is an invalid address, please make sure it has a scheme and a hostname"),
        (
            "http:localhost",
            "http:localhost is an invalid address, please make sure it has a scheme and a hostname",
        ),
        ("://x", 'parse "://x": missing protocol scheme'),
        ("1a:80", 'parse "1a:80": first path segment in URL cannot contain colon'),
        ("http://[::1", "parse \"http://[::1\": missing ']' in host"),
        (
            "http_status:99999999999999999999",
            "invalid HTTP status code: strconv.Atoi: parsing "
            '"99999999999999999999": value out of range',
        ),
        (
            "http_status: 200",
            'invalid HTTP status code: strconv.Atoi: parsing " 200": invalid syntax',
        ),
    ],
)
def test_service_errors(service: str, message: str) -> None:
    with pytest.raises(IngressError) as caught:
        parse_ingress([IngressRuleConfig(service=service)])
    assert str(caught.value) == message
    assert caught.value.location == "ingress[0].service"


def test_single_origin_precedence() -> None:
    options = OriginOptions(no_tls_verify=True)
    both = ingress_from_cli("http://localhost:1", hello_world=True, options=options)
    assert isinstance(both.rules[0].service, HelloWorldService)
    assert both.rules[0].options.no_tls_verify is True
    bastion = ingress_from_cli("http://localhost:1", bastion=True)
    assert isinstance(bastion.rules[0].service, BastionService)
    assert bastion.rules[0].options.bastion_mode is True
    url_wins = ingress_from_cli("https://localhost:8443/ignored", unix_socket="/run/s")
    assert url_wins.rules[0].service == HttpService(
        "https", "localhost", 8443, "https://localhost:8443"
    )
    no_scheme = ingress_from_cli("localhost:8080")
    assert no_scheme.rules[0].service == HttpService(
        "http", "localhost", 8080, "http://localhost:8080"
    )
    assert ingress_from_cli("ssh://localhost").rules[0].service == StreamService(
        "ssh", "localhost", 22, "ssh://localhost:22"
    )
    unix = ingress_from_cli(None, unix_socket="/run/s")
    assert unix.rules[0].service == UnixService("/run/s", False, "unix:/run/s")
    nothing = ingress_from_cli(None)
    assert nothing.rules[0].service == StatusService(503, "http_status:503")
    assert nothing.find_matching_rule("any.host", "/").index == 0


def test_single_origin_bad_url() -> None:
    with pytest.raises(IngressError, match="Error validating origin URL: URL should not be"):
        ingress_from_cli("")


def test_remote_config_json() -> None:
    ingress = ingress_from_json(
        {
            "originRequest": {"connectTimeout": 12, "noTLSVerify": True},
            "ingress": [
                {
                    "hostname": "a.example.com",
                    "service": "http://localhost:1",
                    "originRequest": {"tlsTimeout": 3},
                },
                {"service": "http_status:404"},
            ],
            "warp-routing": {"connectTimeout": 5},
            "unknownKey": 1,
        }
    )
    assert ingress.rules[0].options.connect_timeout == 12.0
    assert ingress.rules[0].options.tls_timeout == 3.0
    assert ingress.defaults.no_tls_verify is True
    empty = ingress_from_json({"ingress": []})
    assert empty.rules[0].service == StatusService(503, "http_status:503")


def test_remote_config_json_rejects_duration_strings() -> None:
    with pytest.raises(IngressError) as caught:
        ingress_from_json(
            {"ingress": [{"service": "x://y", "originRequest": {"tlsTimeout": "3s"}}]}
        )
    assert caught.value.location == "ingress[0].originRequest.tlsTimeout"
