"""A worker's py-spy profile (``./run bench --py-spy``, raw format) as shares of what it does.

Each sample goes to the first group whose frames are on its stack (the order below: the
system calls first, then the Python steps of a request), so a share is what the worker was
doing, not which caller it was under. Threads other than the event loop's are left out.

    python loadtests/profile_shares.py results/.../profiles/adit-1w-small_gets-worker0.txt
"""

from __future__ import annotations

import collections
import sys

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the write to the origin (loopback `send`)", ("OriginConnection._put",)),
    ("the TLS write to the edge", ("TunnelIO.write_held", "SSLObject.write")),
    (
        "the origin request head (build_request_head, serialise_request_head)",
        ("build_request_head", "serialise_request_head"),
    ),
    (
        "the response to the tunnel (headers serialised, HPACK, frames)",
        ("send_response (protocol", "ConnectorStream._send", "send_whole"),
    ),
    ("the origin's response parsed (llhttp, its callbacks)", ("_Response.feed", "_Response.on_")),
    (
        "the tunnel read (HTTP/2 frames, HPACK, the request event)",
        ("TunnelHttp2Connection.receive_data", "ConnectorTunnelConnection._request"),
    ),
    ("the origin pool (checkout, checkin)", ("ConnectionPool.",)),
    (
        "dispatch (ingress match, IncomingRequest, the callback path's bookkeeping)",
        ("EdgeConnection.on_event", "serve_quick", "QuickExchange", "quick_done", "quick_end"),
    ),
    (
        "the general path's task and coroutines (serve, _proxy_http, _exchange, awaits)",
        (
            "OriginProxy.serve ",
            "OriginProxy._serve",
            "_proxy_http",
            "_exchange",
            "_guarded",
            "receive_response",
        ),
    ),
    (
        "ZeroMQ telemetry",
        ("zmq", "_send_events", "_heartbeat", "_report_stats", "_publish_stats"),
    ),
    ("other Python of the reads", ("data_received", "TunnelIO.", "flush")),
)
_IDLE_THREADS = ("thread_main", "ThreadPoolExecutor", "_worker (concurrent")
_LOOP = "uvloop's own C (epoll_wait, socket reads, callbacks' dispatch)"


def shares(path: str) -> tuple[int, list[tuple[str, float]]]:
    """Samples of the loop's thread, and each group's share of them, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as lines:
        for line in lines:
            stack, _, number = line.rstrip("\n").rpartition(" ")
            if not number.isdigit() or any(name in stack for name in _IDLE_THREADS):
                continue
            samples = int(number)
            total += samples
            label = next((name for name, keys in GROUPS if any(k in stack for k in keys)), None)
            if label is None:
                leaf = stack.split(";")[-1]
                label = _LOOP if leaf.startswith("Runner.run") or not stack.strip() else "other"
            counts[label] += samples
    return total, [(label, 100 * n / max(total, 1)) for label, n in counts.most_common()]


def main() -> None:
    for path in sys.argv[1:]:
        total, rows = shares(path)
        print(f"{path}: {total} samples")
        for label, share in rows:
            print(f"| {share:4.1f} % | {label} |")


if __name__ == "__main__":
    main()
