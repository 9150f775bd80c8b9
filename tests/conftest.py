"""Fixtures over the harness (tests/harness.py): edge, account, origins, processes."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Account, Edge, Origin, Processes, login, pattern_bytes, start_edge


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.cleanup()


@pytest.fixture
def edge(processes: Processes) -> Edge:
    return start_edge(processes)


@pytest.fixture
def account(edge: Edge, tmp_path: Path) -> Account:
    return login(edge, tmp_path / "home")


@pytest.fixture
def origin() -> Iterator[Origin]:

    release = threading.Event()
    accepted: list[int] = []
    seen: list[list[tuple[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            accepted.append(1)

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def do_GET(self) -> None:
            seen.append(list(self.headers.items()))
            path = self.path.split("?", 1)[0]
            if path.startswith("/big/"):
                size = int(path.rsplit("/", 1)[1])
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                data = pattern_bytes(size)
                view = memoryview(data)
                for offset in range(0, size, 256 * 1024):
                    self.wfile.write(view[offset : offset + 256 * 1024])
            elif path == "/slow":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self._chunk(b"first piece\n")
                release.wait(15)
                self._chunk(b"second piece\n")
                self._chunk(b"")
            elif path == "/headers":
                body = json.dumps(list(self.headers.items())).encode()
                self._send(
                    200,
                    body,
                    [
                        ("X-Multi", "one"),
                        ("X-Multi", "two"),
                        ("X-CamelCase-Header", "Kept"),
                        ("X-Latin", "caf\xe9"),
                        ("Set-Cookie", "a=1"),
                        ("Set-Cookie", "b=2"),
                        ("Content-Type", "application/json"),
                    ],
                )
            else:
                self._send(200, f"hello {self.path}".encode(), [("Content-Type", "text/plain")])

        def do_POST(self) -> None:
            seen.append(list(self.headers.items()))
            body = self._read_body()
            if self.path.startswith("/sha"):
                self._send(200, hashlib.sha256(body).hexdigest().encode())
            else:
                self._send(200, body, [("Content-Type", "application/octet-stream")])

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Origin(server.server_address[1], release, accepted, seen)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def ws_origin() -> Iterator[int]:
    """A WebSocket echo origin (the `websockets` library) on 127.0.0.1; yields its port."""

    import websockets.asyncio.server

    started = threading.Event()
    state: dict[str, object] = {}

    async def echo(ws: websockets.asyncio.server.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"] = stop
        state["loop"] = asyncio.get_running_loop()
        async with websockets.asyncio.server.serve(echo, "127.0.0.1", 0) as server:
            state["port"] = next(iter(server.sockets)).getsockname()[1]
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield int(state["port"])  # type: ignore[call-overload]
    finally:
        loop = state["loop"]
        stop = state["stop"]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(10)
