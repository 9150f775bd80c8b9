"""CPU cost of the edge's eyeball HTTP/1.1 side alone: parse, answer, serialise, socket I/O.

Serves ``adit.edge.http1.Http1Connection`` on loopback with a stub handler that does what the
public listener does with a request's head and a 1 KiB, 8-header response (no tunnel), and
drives keep-alive GETs from a client in another process. The figure is this process's CPU
time per request, so it holds up on a busy machine better than requests/s. Usage:
``python loadtests/edge_http1_bench.py [--requests N] [--depth D] [--rounds R]``
(``--depth`` > 1 pipelines D requests per write).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import uvloop

from adit.edge.http1 import BadRequest, Http1Connection, Request

_BODY = b"x" * 1024
_HEADERS = [
    ("Server", "nginx/1.22.1"),
    ("Date", "Wed, 25 Nov 2026 23:00:00 GMT"),
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", "1024"),
    ("Last-Modified", "Wed, 25 Nov 2026 20:00:00 GMT"),
    ("ETag", '"6565f0c0-400"'),
    ("Accept-Ranges", "bytes"),
    ("Cf-Ray", "0123456789abcdef-LHR"),
]

# The client: blocking socket, D requests per write, reads D responses by Content-Length.
_CLIENT = r"""
import socket, sys
port, n, depth = (int(a) for a in sys.argv[1:4])
req = (b"GET /file-1k HTTP/1.1\r\nHost: bench.localhost\r\nUser-Agent: bench/1.0\r\n"
       b"Accept: */*\r\nAccept-Encoding: gzip\r\n\r\n")
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf, done = b"", 0
while done < n:
    k = min(depth, n - done)
    s.sendall(req * k)
    got = 0
    while got < k:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            length = int(buf[:i].lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(buf) >= i + 4 + length:
                assert buf.startswith(b"HTTP/1.1 200 "), buf[:40]
                buf, got = buf[i + 4 + length:], got + 1
                continue
        data = s.recv(1 << 16)
        assert data, "closed"
        buf += data
    done += k
s.close()
"""


async def _handle(conn: Http1Connection, request: Request) -> bool:
    # What the public listener does with a head before the tunnel: headers as latin-1 text.
    _ = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
    await conn.start_response(200, _HEADERS, flush=False)
    await conn.send_body(_BODY, flush=False)
    await conn.end_response()
    return True


async def _bad_request(conn: Http1Connection, exc: BadRequest) -> None:
    raise exc


async def _drive(port: int, requests: int, depth: int) -> None:
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, str(port), str(requests), str(depth)
    )
    if await client.wait() != 0:
        raise RuntimeError("the client failed")


async def _run(requests: int, depth: int, rounds: int) -> list[float]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Http1Connection(_handle, _bad_request), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    await _drive(port, 300, depth)  # warm-up
    figures = []
    for _ in range(rounds):
        start = time.process_time()
        await _drive(port, requests, depth)
        figures.append((time.process_time() - start) / requests * 1e6)
    server.close()
    return figures


def main() -> None:
    """Print CPU µs per request (median, min, max over the rounds) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = uvloop.run(_run(args.requests, args.depth, args.rounds))
    result = {
        "requests": args.requests,
        "depth": args.depth,
        "cpu_us_per_request_median": round(statistics.median(figures), 1),
        "min": round(min(figures), 1),
        "max": round(max(figures), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
