"""Quick tunnels: ``adit tunnel --url URL`` with no edge configured.

cloudflared asks trycloudflare.com for a throwaway tunnel; adit starts an embedded edge on
loopback instead, provisions a tunnel on ``<random>.localhost`` (which curl and browsers
resolve to 127.0.0.1 without DNS), then becomes the connector for it. The edge exits with
this process and deletes its state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from adit.cli.quick_announce import announce_when_connected
from adit.cli.state import CommandFailure
from adit.service_manager import child_environment

START_TIMEOUT = 20.0
#: Set for the ``tunnel run`` a quick tunnel execs into: its URL, which the metrics server's
#: ``/quicktunnel`` and ``cloudflared_tunnel_user_hostnames_counts`` show (cloudflared passes
#: it in memory; here a process boundary lies between).
QUICK_TUNNEL_URL_VARIABLE = "ADIT_QUICK_TUNNEL_URL"


def quick_protocol_args(environ: Mapping[str, str], *, protocol_set: bool = False) -> list[str]:
    """cloudflared runs a quick tunnel over QUIC unless the protocol was set
    (cmd/cloudflared/tunnel/quick_tunnel.go:85-86): by a flag or by its variable."""
    if protocol_set or "TUNNEL_TRANSPORT_PROTOCOL" in environ:
        return []
    return ["--protocol", "quic"]


def start_quick_tunnel(
    *,
    url: str | None,
    hello_world: bool,
    http_listen: str,
    passthrough: list[str],
    protocol_set: bool = False,
) -> None:
    """Start the embedded edge, then exec into ``adit tunnel run`` for the quick tunnel."""
    state = Path(tempfile.mkdtemp(prefix="adit-quick-"))
    ready = state / "ready.json"
    quick = state / "quick.json"
    log_path = state / "edge.log"
    with log_path.open("wb") as log:
        edge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adit.cli",
                "edge",
                "--state-dir",
                str(state),
                "--tunnel-listen",
                "127.0.0.1:0",
                "--http-listen",
                http_listen,
                "--api-listen",
                "127.0.0.1:0",
                "--location",
                "quick",
                "--quick-tunnel",
                str(quick),
                "--ready-file",
                str(ready),
                "--exit-with-pid",
                str(os.getpid()),
                "--ephemeral",
                "--loglevel",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # systemd's notify socket, watchdog and sockets are the connector's: the edge is
            # up long before a connection is, and must not say READY=1 (nor STOPPING=1).
            env=child_environment(),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists():
        if edge.poll() is not None or time.monotonic() > deadline:
            output = log_path.read_text(errors="replace") if log_path.exists() else ""
            edge.kill()
            raise CommandFailure(f"failed to start the embedded edge for a quick tunnel:\n{output}")
        time.sleep(0.05)
    info = json.loads(quick.read_text())
    token_file = state / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(info["token"])
    origin = ["--hello-world"] if hello_world else ["--url", url or "http://localhost:8080"]
    argv = [
        sys.executable,
        "-m",
        "adit.cli",
        "tunnel",
        "run",
        # The user's flags first: what the quick tunnel sets itself comes after and wins.
        *passthrough,
        "--token-file",
        str(token_file),
        "--ha-connections",
        "1",
        *quick_protocol_args(os.environ, protocol_set=protocol_set),
        *origin,
    ]
    # The URL is printed once it works: after the first connection registered.
    ca_pem = Path(json.loads(ready.read_text())["ca"]).read_text()
    announce_when_connected(info, ca_pem)
    os.environ[QUICK_TUNNEL_URL_VARIABLE] = info["url"]
    sys.stderr.flush()
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - argv is ours, no shell involved
