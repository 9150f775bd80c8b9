"""Property tests: valid rule sets survive the JSON (remote config) form; matching never fails."""

from __future__ import annotations

import contextlib

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from adit.config.duration import Duration
from adit.config.errors import IngressError
from adit.config.ingress import Ingress, ingress_from_json, parse_ingress
from adit.config.model import (
    AccessConfig,
    IngressRuleConfig,
    IpRuleConfig,
    OriginRequestConfig,
    RemoteConfig,
    to_json_object,
)

labels = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
hostnames = st.lists(labels, min_size=2, max_size=4).map(".".join)
rule_hosts = st.one_of(hostnames, hostnames.map(lambda h: "*." + h), st.just("münchen.example"))
paths = st.sampled_from(["", "/api", r"^/v[0-9]+/", r"\.html$", "/status"])
services = st.one_of(
    st.builds("http://{}:{}".format, hostnames, st.integers(1, 65535)),
    st.builds("https://{}".format, hostnames),
    st.builds("ssh://{}".format, hostnames),
    st.integers(100, 999).map("http_status:{}".format),
    st.sampled_from(["hello_world", "bastion", "unix:/run/a.sock", "unix+tls:/run/b.sock"]),
)
durations = st.integers(0, 10_000).map(Duration.from_seconds)
origin_requests = st.builds(
    OriginRequestConfig,
    connect_timeout=st.none() | durations,
    tls_timeout=st.none() | durations,
    keep_alive_connections=st.none() | st.integers(0, 1000),
    no_tls_verify=st.none() | st.booleans(),
    http_host_header=st.none() | hostnames,
    proxy_port=st.none() | st.integers(0, 65535),
    ip_rules=st.none()
    | st.lists(
        st.builds(IpRuleConfig, prefix=st.just("10.0.0.0/8"), ports=st.lists(st.integers(1, 9))),
        max_size=2,
    ),
    access=st.none() | st.builds(AccessConfig, required=st.booleans(), team_name=labels),
)
rules = st.builds(
    IngressRuleConfig,
    hostname=rule_hosts,
    path=paths,
    service=services,
    origin_request=st.none() | origin_requests,
)
catch_alls = st.builds(
    IngressRuleConfig,
    hostname=st.sampled_from(["", "*"]),
    service=services,
    origin_request=st.none() | origin_requests,
)
rule_lists = st.builds(lambda body, last: [*body, last], st.lists(rules, max_size=5), catch_alls)


def summary(ingress: Ingress) -> list[tuple[object, ...]]:
    return [
        (r.index, r.hostname, r.punycode_hostname, r.path, r.service, r.options)
        for r in ingress.rules
    ]


@settings(max_examples=60, deadline=None)
@given(rule_lists, st.none() | origin_requests)
def test_valid_rules_round_trip_through_json(
    rule_list: list[IngressRuleConfig], defaults: OriginRequestConfig | None
) -> None:
    direct = parse_ingress(rule_list, defaults)
    wire = msgspec.json.encode(
        to_json_object(RemoteConfig(ingress=rule_list, origin_request=defaults))
    )
    remote = ingress_from_json(msgspec.json.decode(wire))
    assert summary(remote) == summary(direct)
    assert remote.defaults == direct.defaults


@settings(max_examples=80, deadline=None)
@given(rule_lists, st.text(max_size=30), st.text(max_size=30))
def test_matching_never_raises_and_returns_a_rule(
    rule_list: list[IngressRuleConfig], host: str, path: str
) -> None:
    ingress = parse_ingress(rule_list)
    matched = ingress.find_matching_rule(host, path)
    assert ingress.rules[matched.index] is matched


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=20), st.text(max_size=10))
def test_arbitrary_rules_fail_only_with_ingress_errors(
    service: str, hostname: str, path: str
) -> None:
    with contextlib.suppress(IngressError):
        parse_ingress([IngressRuleConfig(hostname=hostname, path=path, service=service)])
