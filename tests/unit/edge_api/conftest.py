"""A real TLS server on 127.0.0.1 serving ``ManagementApi.handle`` (for CLI-over-HTTP tests)."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adit.edge.api import MAX_BODY, EdgeInfo, ManagementApi
from adit.edge.ca import EdgeCA
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store


@dataclass
class ApiServer:
    """The running server and what it serves."""

    url: str
    store: Store
    registry: ConnectionRegistry
    ca: EdgeCA
    state_dir: Path


def _handler(api: ManagementApi) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else b""
            headers = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
            status, out_headers, payload = asyncio.run(
                api.handle(self.command, self.path, headers, body)
            )
            self.send_response(status)
            for name, value in out_headers:
                self.send_header(name.decode(), value.decode())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ApiServer]:
    state_dir = tmp_path / "edge-state"
    ca = EdgeCA.load_or_create(state_dir)
    store = Store.open_in(state_dir)
    registry = ConnectionRegistry()
    api = ManagementApi(store, registry, EdgeInfo(("127.0.0.1:7844",), ca.cert_pem))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    context = ca.api_server_context()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    port = server.server_address[1]
    try:
        yield ApiServer(f"https://127.0.0.1:{port}", store, registry, ca, state_dir)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        store.close()
