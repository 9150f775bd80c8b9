"""CPU cost of the sans-IO HTTP/2 tunnel layer alone, both roles in one process.

The whole-system figures move with whatever else the machine runs; this one measures process
CPU time of the protocol code for a fixed amount of work, so a change to
``adit.protocol.http2`` can be judged on a busy machine too. Compare two trees with
``PYTHONPATH=<tree>/protocol python loadtests/microbench.py``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time

from adit.protocol.headers import ResponseMeta
from adit.protocol.http2 import (
    ConnectorTunnelConnection,
    DataReceived,
    EdgeTunnelConnection,
    Event,
    RequestReceived,
    ResponseReceived,
)

_EYEBALL = [
    ("Host", "bench.localhost"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.5"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Cookie", "session=0123456789abcdef0123456789abcdef; theme=dark"),
    ("X-Forwarded-Proto", "http"),
]
_ORIGIN = [
    ("Server", "nginx/1.22.1"),
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", "1024"),
    ("Last-Modified", "Wed, 25 Nov 2026 21:00:00 GMT"),
    ("Connection", "keep-alive"),
    ("ETag", '"6566a7b0-400"'),
    ("Accept-Ranges", "bytes"),
]


class _Wire:
    def __init__(self) -> None:
        self.edge = EdgeTunnelConnection()
        self.connector = ConnectorTunnelConnection()
        self.edge.initiate()
        self.connector.initiate()
        self.to_edge: list[Event] = []
        self.to_connector: list[Event] = []
        self.pump()

    def pump(self) -> None:
        while True:
            down = self.edge.data_to_send()
            up = self.connector.data_to_send()
            if not down and not up:
                return
            if down:
                self.to_connector += self.connector.receive_data(down)
            if up:
                self.to_edge += self.edge.receive_data(up)


def requests(count: int, body: bytes) -> float:
    """CPU µs per small request/response, both roles together."""
    wire = _Wire()
    started = time.process_time()
    for _ in range(count):
        ray = [("Cf-Ray", f"{secrets.token_hex(8)}-bench")]
        sid = wire.edge.send_request(
            "GET",
            "/1k.bin",
            "bench.localhost",
            _EYEBALL + ray,
            serialize_headers=True,
            end_stream=True,
        )
        wire.pump()
        for event in wire.to_connector:
            if isinstance(event, RequestReceived):
                wire.connector.send_response(sid, 200, _ORIGIN, meta=ResponseMeta.ORIGIN)
                wire.connector.send_data(sid, body, end_stream=True)
        wire.to_connector.clear()
        wire.pump()
        for event in wire.to_edge:
            if isinstance(event, DataReceived):
                wire.edge.acknowledge(event.stream_id, event.flow_controlled_length)
            elif isinstance(event, ResponseReceived):
                pass
        wire.to_edge.clear()
        wire.pump()
    return 1e6 * (time.process_time() - started) / count


def transfer(total: int, chunk: int) -> float:
    """CPU-bound MB/s of one response body, connector → edge, ``chunk`` bytes at a time."""
    wire = _Wire()
    sid = wire.edge.send_request("GET", "/big", "h", [], end_stream=True)
    wire.pump()
    wire.connector.send_response(sid, 200, [], meta=ResponseMeta.ORIGIN)
    data = bytes(chunk)
    started = time.process_time()
    sent = 0
    while sent < total:
        wire.connector.send_data(sid, data)
        sent += chunk
        up = wire.connector.data_to_send()
        if up:
            for event in wire.edge.receive_data(up):
                if isinstance(event, DataReceived):
                    wire.edge.acknowledge(event.stream_id, event.flow_controlled_length)
        down = wire.edge.data_to_send()
        if down:
            wire.connector.receive_data(down)
    return total / (time.process_time() - started) / 1e6


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    out = {
        "request_us": round(min(requests(args.requests, bytes(1024)) for _ in range(3)), 1),
        "transfer_mbps_64k": round(max(transfer(args.mib << 20, 65536) for _ in range(3)), 1),
        "transfer_mbps_256k": round(max(transfer(args.mib << 20, 262144) for _ in range(3)), 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
