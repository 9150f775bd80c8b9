"""Metrics exposition, /ready and /healthcheck, the metrics address choice, signal queueing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket

import pytest

from adit.ipc.messages import StatsSnapshot
from adit.metrics_listener import (
    DEFAULT_METRICS_PORTS,
    MetricsServer,
    bind_metrics_socket,
    format_address,
    parse_listen_address,
)
from adit.supervisor.errors import MetricsListenerError
from adit.supervisor.metrics import TunnelStats, build_registry, render_metrics
from adit.supervisor.settings import DEFAULT_METRICS_ADDRESS
from adit.supervisor.signals import (
    SignalReceived,
    capture_early,
    install_signal_handlers,
    remove_signal_handlers,
)


def _stats() -> TunnelStats:
    stats = TunnelStats("2026.11.0")
    stats.update(StatsSnapshot(0, 10, 2, 3, {"200": 7, "404": 1}))
    stats.update(StatsSnapshot(1, 5, 1, 0, {"200": 4}))
    stats.ha_connections = 4
    stats.register_success = 5
    return stats


def test_metrics_use_cloudflared_names_exactly() -> None:
    lines = render_metrics(build_registry(_stats())).decode().splitlines()
    assert "cloudflared_tunnel_total_requests 15.0" in lines
    assert "# TYPE cloudflared_tunnel_total_requests counter" in lines
    assert "cloudflared_tunnel_request_errors 3.0" in lines
    assert "cloudflared_tunnel_concurrent_requests_per_tunnel 3.0" in lines
    assert 'cloudflared_tunnel_response_by_code{status_code="200"} 11.0' in lines
    assert 'cloudflared_tunnel_response_by_code{status_code="404"} 1.0' in lines
    assert "cloudflared_tunnel_ha_connections 4.0" in lines
    assert 'cloudflared_tunnel_tunnel_register_success{rpcName="registerConnection"} 5.0' in lines
    assert any(line.startswith("build_info{") and 'version="2026.11.0"' in line for line in lines)
    assert not any("_total_total" in line or "requests_total" in line for line in lines)
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)


def _server(ready: tuple[int, dict[str, object]]) -> MetricsServer:
    return MetricsServer(lambda: ready, lambda: render_metrics(build_registry(_stats())))


def test_ready_json_is_cloudflared_shape() -> None:
    body: dict[str, object] = {"status": 200, "readyConnections": 2, "connectorId": "x"}
    status, content_type, payload = _server((200, body)).respond("GET", "/ready")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert payload == b'{"status":200,"readyConnections":2,"connectorId":"x"}'


def test_healthcheck_and_unknown_paths() -> None:
    server = _server((503, {}))
    assert server.respond("GET", "/healthcheck") == (200, "text/plain; charset=utf-8", b"OK\n")
    assert server.respond("GET", "/nope")[0] == 404
    assert server.respond("POST", "/ready")[0] == 405
    assert server.respond("GET", "/metrics?x=1")[0] == 200


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_server_answers_over_http() -> None:
    async def main() -> None:
        body: dict[str, object] = {"status": 503, "readyConnections": 0, "connectorId": "c"}
        server = _server((503, body))
        sock = bind_metrics_socket("127.0.0.1:0")
        await server.start(sock)
        port = sock.getsockname()[1]
        try:
            status, payload = await _get(port, "/ready")
            assert status == 503
            assert json.loads(payload) == body
            assert await _get(port, "/healthcheck") == (200, b"OK\n")
            status, payload = await _get(port, "/metrics")
            assert status == 200 and b"cloudflared_tunnel_total_requests 15.0" in payload
        finally:
            await server.close()

    asyncio.run(main())


def test_default_address_prefers_20241_range() -> None:
    sock = bind_metrics_socket(DEFAULT_METRICS_ADDRESS)
    try:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1"
        free_default = []
        for candidate in DEFAULT_METRICS_PORTS:
            if candidate == port:
                break
            free_default.append(candidate)
        # Either one of the five default ports, or all five were taken (then a random one).
        assert port in DEFAULT_METRICS_PORTS or len(free_default) == len(DEFAULT_METRICS_PORTS)
    finally:
        sock.close()


def test_default_address_skips_taken_port() -> None:
    held: list[socket.socket] = []
    try:
        first = bind_metrics_socket(DEFAULT_METRICS_ADDRESS)
        held.append(first)
        second = bind_metrics_socket(DEFAULT_METRICS_ADDRESS)
        held.append(second)
        assert second.getsockname()[1] != first.getsockname()[1]
    finally:
        for sock in held:
            sock.close()


def test_explicit_address_failure_is_fatal() -> None:
    holder = bind_metrics_socket("127.0.0.1:0")
    try:
        taken = format_address(holder)
        with pytest.raises(MetricsListenerError, match="Error opening metrics server listener"):
            bind_metrics_socket(taken)
    finally:
        holder.close()


def test_parse_listen_address() -> None:
    assert parse_listen_address("localhost:2000") == ("localhost", 2000)
    assert parse_listen_address("[::1]:0") == ("::1", 0)
    assert parse_listen_address(":9") == ("", 9)
    with pytest.raises(MetricsListenerError, match="missing port"):
        parse_listen_address("localhost")


def test_signal_handlers_only_enqueue() -> None:
    async def main() -> SignalReceived:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SignalReceived] = asyncio.Queue()
        install_signal_handlers(loop, queue.put_nowait, [signal.SIGUSR1])
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            return await asyncio.wait_for(queue.get(), 5.0)
        finally:
            remove_signal_handlers(loop, [signal.SIGUSR1])

    assert asyncio.run(main()).signum == signal.SIGUSR1


def test_signals_before_the_loop_are_queued_in_order_once_it_runs() -> None:
    wanted = [signal.SIGUSR1, signal.SIGUSR2]
    capture_early(wanted)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
    except BaseException:
        for signum in wanted:
            signal.signal(signum, signal.SIG_DFL)
        raise

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SignalReceived] = asyncio.Queue()
        install_signal_handlers(loop, queue.put_nowait, wanted)
        try:
            early = [queue.get_nowait().signum, queue.get_nowait().signum]
            os.kill(os.getpid(), signal.SIGUSR1)
            later = await asyncio.wait_for(queue.get(), 5.0)
            return [*early, later.signum]
        finally:
            remove_signal_handlers(loop, wanted)

    assert asyncio.run(main()) == [signal.SIGUSR2, signal.SIGUSR1, signal.SIGUSR1]
