"""cloudflared's tcp, proxy, config-push, rpc and flow-limit families, /config, /quicktunnel
and the promhttp/process extras, from worker snapshots (no processes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from adit.ipc.messages import (
    ConnectorCounters,
    IngressSnapshot,
    StatsSnapshot,
    UdpStats,
)
from adit.ipc.telemetry import (
    CONNECT_LATENCY_BUCKETS,
    RPC_LATENCY_BUCKETS,
    Histogram,
    RpcCallCounters,
)
from adit.metrics_listener import MetricsServer
from adit.supervisor.config_view import config_routes, quicktunnel_json, versioned_config_json
from adit.supervisor.metrics import TunnelStats, build_registry, render_metrics
from adit.supervisor.standard_metrics import ScrapeCounter, go_number, process_extras

CORPUS = Path(__file__).parents[2] / "corpus" / "cloudflared_metrics"


def _worker(slot: int, latencies: list[float], rpc_seconds: list[float]) -> StatsSnapshot:
    connect = Histogram(CONNECT_LATENCY_BUCKETS)
    for value in latencies:
        connect.observe(value)
    client = RpcCallCounters()
    for seconds in rpc_seconds:
        client.record("registration", "register_connection", seconds, failed=seconds > 1)
    server = RpcCallCounters()
    server.record("session", "register_udp_session", 0.01, failed=False)
    return StatsSnapshot(
        slot,
        3,
        0,
        1,
        {},
        connector=ConnectorCounters(
            tcp_active_sessions=1,
            tcp_total_sessions=2,
            connect_latency=connect.snapshot(),
            connect_stream_errors=slot,
            local_config_pushes=1 - slot,
            rpc_client=client.snapshot(),
            rpc_server=server.snapshot(),
            flows_rate_limited={"udp": 2},
        ),
    )


def _lines() -> list[str]:
    stats = TunnelStats("2026.12.0")
    stats.update(_worker(0, [0, 12, 7000], [0.01, 2.0]))
    stats.update(_worker(1, [3], [0.2]))
    return render_metrics(build_registry(stats)).decode().splitlines()


def test_counters_are_summed_over_workers_under_cloudflareds_names() -> None:
    lines = _lines()
    assert "cloudflared_tcp_active_sessions 2.0" in lines
    assert "cloudflared_tcp_total_sessions 4.0" in lines
    assert "cloudflared_proxy_connect_streams_errors 1.0" in lines
    assert "cloudflared_config_local_config_pushes 1.0" in lines
    assert "cloudflared_config_local_config_pushes_errors 0.0" in lines
    assert 'flow_client_registrations_rate_limited_total{flow_type="udp"} 4.0' in lines
    ops = 'cloudflared_rpc_client_operations{handler="registration",method="register_connection"}'
    assert f"{ops} 3.0" in lines
    failures = ops.replace("operations", "failures")
    assert f"{failures} 1.0" in lines
    served = 'cloudflared_rpc_server_operations{handler="session",method="register_udp_session"}'
    assert f"{served} 2.0" in lines


def test_histograms_have_gos_buckets_and_le_labels() -> None:
    lines = _lines()
    buckets = [line for line in lines if line.startswith("cloudflared_proxy_connect_latency_")]
    # 0 and 3 ms in the 1 and 10 buckets, 12 in 25, 7000 only in +Inf; cumulative, as Go's.
    assert buckets == [
        'cloudflared_proxy_connect_latency_bucket{le="1"} 1.0',
        'cloudflared_proxy_connect_latency_bucket{le="10"} 2.0',
        'cloudflared_proxy_connect_latency_bucket{le="25"} 3.0',
        'cloudflared_proxy_connect_latency_bucket{le="50"} 3.0',
        'cloudflared_proxy_connect_latency_bucket{le="100"} 3.0',
        'cloudflared_proxy_connect_latency_bucket{le="500"} 3.0',
        'cloudflared_proxy_connect_latency_bucket{le="1000"} 3.0',
        'cloudflared_proxy_connect_latency_bucket{le="5000"} 3.0',
        'cloudflared_proxy_connect_latency_bucket{le="+Inf"} 4.0',
        "cloudflared_proxy_connect_latency_count 4.0",
        "cloudflared_proxy_connect_latency_sum 7015.0",
    ]
    # The RPC latency bounds are the floats Go's ExponentialBuckets makes, as the recorded
    # cloudflared scrape prints them; le comes after the other labels.
    recorded = set(re.findall(r'le="([^"]+)"', (CORPUS / "metrics.txt").read_text()))
    ours = {go_number(bound) for bound in RPC_LATENCY_BUCKETS}
    assert ours <= recorded
    rpc = [line for line in lines if line.startswith("cloudflared_rpc_client_latency_secs_bucket")]
    assert rpc[0].startswith(
        'cloudflared_rpc_client_latency_secs_bucket{handler="registration",'
        'method="register_connection",le="0.05"}'
    )


def test_labelled_families_have_no_series_until_used() -> None:
    lines = render_metrics(build_registry(TunnelStats("x"))).decode().splitlines()
    assert "# TYPE cloudflared_rpc_client_operations counter" in lines
    assert not any(line.startswith("cloudflared_rpc_client_operations{") for line in lines)
    assert "cloudflared_tcp_total_sessions 0.0" in lines
    assert not any("user_hostnames_counts{" in line for line in lines)


def test_a_quick_tunnel_is_named_in_user_hostnames_counts() -> None:
    registry = build_registry(TunnelStats("x"), quick_tunnel_url="http://abc.localhost:8080")
    text = render_metrics(registry).decode()
    assert (
        'cloudflared_tunnel_user_hostnames_counts{userHostname="http://abc.localhost:8080"} 1.0'
        in text
    )


def test_udp_v3_retries_and_unsupported_commands() -> None:
    stats = TunnelStats("x")
    udp = UdpStats(
        retry_flow_responses={0: 2},
        unsupported_remote_commands={1: {"register_udp_session": 3}},
    )
    stats.update(StatsSnapshot(0, 0, 0, 0, {}, udp))
    stats.update(StatsSnapshot(1, 0, 0, 0, {}, UdpStats(retry_flow_responses={0: 1})))
    lines = render_metrics(build_registry(stats)).decode().splitlines()
    assert 'cloudflared_udp_retry_flow_responses{conn_index="0"} 3.0' in lines
    assert (
        'cloudflared_udp_unsupported_remote_command_total{command="register_udp_session",'
        'conn_index="1"} 3.0'
    ) in lines


def test_config_has_cloudflareds_shape_and_resolved_origin_request() -> None:
    snapshot = IngressSnapshot(
        version=3,
        rules=[
            {
                "hostname": "a.example.com",
                "path": "^/api",
                "service": "http://127.0.0.1:8080",
                "originRequest": {
                    "access": {"required": True, "teamName": "t", "audTag": ["x"]},
                    "ipRules": [{"prefix": "10.0.0.0/8", "ports": [80], "allow": True}],
                },
            },
            {"service": "http_status:404"},
        ],
        origin_request={"connectTimeout": "1500ms"},
    )
    body = json.loads(versioned_config_json(snapshot, max_active_flows=5))
    recorded = json.loads((CORPUS / "config.json").read_text())
    assert body["version"] == 3
    assert list(body["config"]) == list(recorded["config"])
    assert body["config"]["warp-routing"] == {"maxActiveFlows": 5}
    first, last = body["config"]["ingress"]
    recorded_rule = recorded["config"]["ingress"][0]
    assert list(first) == list(recorded_rule)
    assert list(first["originRequest"]) == list(recorded_rule["originRequest"])
    assert first["path"] == "^/api" and first["service"] == "http://127.0.0.1:8080"
    assert first["originRequest"]["connectTimeout"] == 1.5
    assert first["originRequest"]["access"] == {"required": True, "teamName": "t", "audTag": ["x"]}
    assert first["originRequest"]["ipRules"] == [
        {"prefix": "10.0.0.0/8", "ports": [80], "allow": True}
    ]
    assert last["hostname"] == "" and last["path"] is None and last["service"] == "http_status:404"
    assert last["originRequest"]["access"] == {"teamName": "", "audTag": None}
    assert body["config"]["originRequest"] == last["originRequest"]


def test_config_of_a_single_origin_from_the_command_line() -> None:
    snapshot = IngressSnapshot(version=1, cli_url="http://localhost:3000")
    rules = json.loads(versioned_config_json(snapshot))["config"]["ingress"]
    assert [(r["hostname"], r["service"]) for r in rules] == [("", "http://localhost:3000")]


def test_quicktunnel_body() -> None:
    assert quicktunnel_json("") == b'{"hostname":""}'
    assert json.loads(quicktunnel_json("http://abc.localhost:8080")) == {
        "hostname": "abc.localhost:8080"
    }


def test_the_server_answers_config_and_quicktunnel_and_counts_scrapes() -> None:
    server = MetricsServer(
        lambda: (200, {}),
        lambda: b"",
        config_routes(lambda: b'{"version":1}', lambda: quicktunnel_json("")),
    )
    assert server.respond("GET", "/config")[::2] == (200, b'{"version":1}')
    assert server.respond("GET", "/quicktunnel")[::2] == (200, b'{"hostname":""}')
    server.respond("GET", "/metrics")
    _, _, body = server.respond("GET", "/metrics")
    lines = body.decode().splitlines()
    assert "promhttp_metric_handler_requests_in_flight 1" in lines
    # The scrape being answered is counted once it is (Go's promhttp counts after serving).
    assert 'promhttp_metric_handler_requests_total{code="200"} 1' in lines
    assert 'promhttp_metric_handler_requests_total{code="503"} 0' in lines
    bare = MetricsServer(lambda: (200, {}), lambda: b"")
    assert bare.respond("GET", "/config")[0] == 404


def test_process_extras(tmp_path: Path) -> None:
    netstat = tmp_path / "netstat"
    netstat.write_text(
        "TcpExt: A B\nTcpExt: 1 2\nIpExt: InNoRoutes InOctets OutOctets\nIpExt: 0 1234 5678\n"
    )
    lines = process_extras(netstat).decode().splitlines()
    assert "process_network_receive_bytes_total 1234" in lines
    assert "process_network_transmit_bytes_total 5678" in lines
    assert any(line.startswith("process_virtual_memory_max_bytes ") for line in lines)
    missing = process_extras(tmp_path / "absent").decode()
    assert "process_network" not in missing and "process_virtual_memory_max_bytes" in missing


def test_go_numbers() -> None:
    assert [go_number(v) for v in (1.0, 0.15000000000000002, float("inf"), 2.0**64 - 1)] == [
        "1",
        "0.15000000000000002",
        "+Inf",
        "1.8446744073709552e+19",
    ]
    assert ScrapeCounter().by_code == {"200": 0, "500": 0, "503": 0}


def test_a_failing_provider_is_a_500_not_a_dead_listener() -> None:
    def broken() -> bytes:
        raise ValueError("no ingress")

    server = MetricsServer(lambda: (200, {}), broken, config_routes(broken, broken))
    assert server.respond("GET", "/config") == (
        500,
        "text/plain; charset=utf-8",
        b"ERR: no ingress",
    )
    status, _, body = server.respond("GET", "/metrics")
    assert status == 500 and b"no ingress" in body
    assert server._scrapes.by_code["500"] == 1


#: Every family cloudflared defines (its source: connection/, proxy/, orchestration/,
#: supervisor/, ingress/, quic/, quic/v3/, datagramsession/, tunnelrpc/metrics/, flow/,
#: metrics/), besides the Go runtime's go_* and the default process_*/promhttp_* ones.
CLOUDFLARED_FAMILIES = {
    "build_info",
    "tunnel_ids",
    *(
        f"cloudflared_tunnel_{name}"
        for name in (
            "ha_connections",
            "server_locations",
            "tunnel_register_success",
            "tunnel_register_fail",
            "tunnel_rpc_fail",
            "user_hostnames_counts",
            "max_concurrent_requests_per_tunnel",
            "total_requests",
            "concurrent_requests_per_tunnel",
            "response_by_code",
            "request_errors",
        )
    ),
    "cloudflared_config_local_config_pushes",
    "cloudflared_config_local_config_pushes_errors",
    "cloudflared_tcp_active_sessions",
    "cloudflared_tcp_total_sessions",
    "cloudflared_proxy_connect_latency",
    "cloudflared_proxy_connect_streams_errors",
    "cloudflared_orchestration_config_version",
    *(
        f"cloudflared_udp_{name}"
        for name in (
            "active_sessions",
            "total_sessions",
            "active_flows",
            "total_flows",
            "failed_flows",
            "retry_flow_responses",
            "migrated_flows",
            "unsupported_remote_command_total",
            "dropped_datagrams",
        )
    ),
    "cloudflared_icmp_dropped_packets",
    "cloudflared_icmp_total_requests",
    "cloudflared_icmp_total_replies",
    "cloudflared_virtual_origins_dns_requests_total",
    *(
        f"cloudflared_rpc_{side}_{name}"
        for side in ("client", "server")
        for name in ("operations", "failures", "latency_secs")
    ),
    "flow_client_registrations_rate_limited_total",
    *(
        f"quic_client_{name}"
        for name in (
            "total_connections",
            "closed_connections",
            "max_udp_payload",
            "sent_frames",
            "sent_bytes",
            "received_frames",
            "receive_bytes",
            "buffered_packets",
            "dropped_packets",
            "lost_packets",
            "min_rtt",
            "latest_rtt",
            "smoothed_rtt",
            "mtu",
            "congestion_window",
            "congestion_state",
            "packet_too_big_dropped",
        )
    ),
}


def test_every_cloudflared_family_is_exposed_or_listed_with_a_reason() -> None:
    from adit.ipc.messages import QuicClientStats, QuicConnectionStats
    from adit.supervisor.metric_parity import NEVER_SET, NO_MEANING

    stats = TunnelStats("x")
    stats.update(
        StatsSnapshot(
            0,
            1,
            1,
            0,
            {"200": 1},
            UdpStats(1, 1),
            quic=QuicClientStats(1, 0, [QuicConnectionStats(0)]),
            connector=_worker(0, [1], [0.1]).connector,
        )
    )
    registry = build_registry(stats, quick_tunnel_url="http://q.localhost:1")
    exposed = {
        line.split()[2]
        for line in render_metrics(registry).decode().splitlines()
        if line.startswith("# TYPE ")
    }
    listed = {**NO_MEANING, **NEVER_SET}
    unlisted = {
        name
        for name in CLOUDFLARED_FAMILIES - exposed
        if not any(re.fullmatch(pattern, name) for pattern in listed)
    }
    assert unlisted == set()
    assert {n for n in exposed if any(re.fullmatch(p, n) for p in listed)} == set()
    # Each entry still names a family of cloudflared's (or the Go runtime's).
    for pattern in listed:
        assert pattern == r"go_.*" or any(re.fullmatch(pattern, n) for n in CLOUDFLARED_FAMILIES)


def test_config_of_a_pushed_configuration_shows_the_edges_version() -> None:
    pushed = {
        "ingress": [
            {"hostname": "p.example.com", "service": "http://127.0.0.1:9"},
            {"service": "http_status:404"},
        ],
        "warp-routing": {"enabled": True, "maxActiveFlows": 7},
    }
    snapshot = IngressSnapshot(
        version=4, remote_version=12, remote_config=json.dumps(pushed).encode()
    )
    body = json.loads(versioned_config_json(snapshot))
    assert body["version"] == 12
    assert [r["hostname"] for r in body["config"]["ingress"]] == ["p.example.com", ""]
    assert body["config"]["warp-routing"] == {"maxActiveFlows": 7}
    assert json.loads(versioned_config_json(snapshot, max_active_flows=3))["config"][
        "warp-routing"
    ] == {"maxActiveFlows": 3}
