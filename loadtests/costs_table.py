"""README.md's "What it costs" table, generated from a bench run's ``results.json``.

    .venv/bin/python loadtests/costs_table.py RESULTS_JSON... [--readme README.md]

Prints the table, and with ``--readme`` replaces what stands between the two markers
(``<!-- costs:begin -->`` and ``<!-- costs:end -->``) in that file. It takes the figures it
finds: a row per figure that both adit (one worker) and cloudflared have in a run, over HTTP/2
and over QUIC, from the first run given that has it (each row then names its run), so a run of
a few scenarios makes a shorter table, and a figure added to :data:`ROWS` appears once a run
records it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN = "<!-- costs:begin -->"
END = "<!-- costs:end -->"

Getter = Callable[[dict[str, Any]], float | None]


def _figure(scenario: str, name: str) -> Getter:
    def get(path: dict[str, Any]) -> float | None:
        value = path.get(scenario, {}).get(name)
        return float(value) if isinstance(value, int | float) else None

    return get


def _connector_sum(scenario: str, prefix: str) -> Getter:
    """A per-process figure summed over the connector's processes (supervisor and workers,
    or cloudflared); the edge's is left out."""

    def get(path: dict[str, Any]) -> float | None:
        values = [
            float(v)
            for k, v in path.get(scenario, {}).items()
            if k.startswith(prefix)
            and k[len(prefix) :].startswith(("supervisor", "worker", "cloudflared"))
            and isinstance(v, int | float)
        ]
        return sum(values) if values else None

    return get


def _largest(scenario: str, prefix: str, suffix: str) -> Getter:
    """The largest of a per-process figure over the connector's workers (or cloudflared)."""

    def get(path: dict[str, Any]) -> float | None:
        values = [
            float(v)
            for k, v in path.get(scenario, {}).items()
            if k.startswith(prefix)
            and k.endswith(suffix)
            and k[len(prefix) :].startswith(("worker", "cloudflared"))
            and isinstance(v, int | float)
        ]
        return max(values) if values else None

    return get


#: (label, unit, how to read it, lower is better)
ROWS: tuple[tuple[str, str, Getter, bool], ...] = (
    (
        "idle memory, RSS (all processes)",
        "MiB",
        _figure("footprint", "idle_rss_connector_mib"),
        True,
    ),
    (
        "idle memory, PSS (all processes)",
        "MiB",
        _figure("footprint", "idle_pss_connector_mib"),
        True,
    ),
    (
        "memory with 1,000 idle WebSockets, RSS",
        "MiB",
        _figure("footprint", "ws_rss_connector_mib"),
        True,
    ),
    (
        "largest process with 1,000 idle WebSockets, RSS",
        "MiB",
        _largest("footprint", "ws_rss_", "_mib"),
        True,
    ),
    (
        "CPU per 1 KiB GET, 64 connections",
        "µs",
        _connector_sum("small_gets", "cpu_us_per_req_"),
        True,
    ),
    (
        "CPU per request alone (fixed rate)",
        "µs",
        _connector_sum("latency", "cpu_us_per_req_"),
        True,
    ),
    ("CPU per GiB downloaded", "s", _connector_sum("download", "cpu_s_per_gib_"), True),
    ("CPU per GiB uploaded", "s", _connector_sum("upload", "cpu_s_per_gib_"), True),
    ("start → first registered connection", "s", _figure("startup", "first_registered_s"), True),
)

#: (adit's path, cloudflared's path, transport)
PAIRS = (("adit-1w", "cloudflared", "HTTP/2"), ("adit-1w-quic", "cloudflared-quic", "QUIC"))


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def table(runs: list[dict[str, Any]]) -> str:
    """The markdown table from one or more runs' ``results.json`` (or a line saying nothing
    was found). Each row comes from the first run that has the figure for both connectors, so
    a footprint run and a full run together make one table."""
    lines = [
        "| figure | transport | adit (1 worker) | cloudflared | adit ÷ cloudflared |",
        "|---|---|---|---|---|",
    ]
    used: list[dict[str, Any]] = []
    for label, unit, get, _lower in ROWS:
        for adit, peer, kind in PAIRS:
            for data in runs:
                paths = data.get("paths", {})
                a, c = get(paths.get(adit, {})), get(paths.get(peer, {}))
                if a is None or c is None:
                    continue
                ratio = f"{a / c:.2f}×" if c else "–"
                mark = f" [{_index(used, data)}]" if len(runs) > 1 else ""
                lines.append(
                    f"| {label}{mark} | {kind} | {_fmt(a)} {unit} | {_fmt(c)} {unit} | {ratio} |"
                )
                break
    if len(lines) == 2:
        return "(no figure of both adit and cloudflared in these runs)\n"
    lines.append("")
    for number, data in enumerate(used, 1):
        meta = data.get("meta", {})
        load = meta.get("loadavg_start")
        prefix = f"[{number}] " if len(runs) > 1 else ""
        lines.append(
            f"{prefix}`./run bench` on {meta.get('date', '?')} ({meta.get('cpus', '?')} CPUs,"
            f" load average {' '.join(map(str, load)) if load else '?'} at the start)."
        )
    lines.append(
        "Both connectors on the same adit edge; generated by `loadtests/costs_table.py`. RSS"
        " counts shared library pages in every process, PSS shares them out; CPU is the"
        " connector's processes together. Lower is better everywhere."
    )
    return "\n".join(lines) + "\n"


def _index(used: list[dict[str, Any]], data: dict[str, Any]) -> int:
    """``data``'s number among the runs cited so far (1-based), citing it if new."""
    for number, seen in enumerate(used, 1):
        if seen is data:
            return number
    used.append(data)
    return len(used)


def replace_block(text: str, block: str) -> str:
    """``text`` with what stands between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"markers {BEGIN} … {END} not found")
    return text[: start + len(BEGIN)] + "\n" + block + text[end:]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results", type=Path, nargs="+", help="bench runs' results.json, preferred first"
    )
    parser.add_argument("--readme", type=Path, help="the file whose marked block to replace")
    args = parser.parse_args(argv)
    block = table([json.loads(path.read_text()) for path in args.results])
    if args.readme is None:
        sys.stdout.write(block)
        return 0
    try:
        args.readme.write_text(replace_block(args.readme.read_text(), block))
    except ValueError as exc:
        print(f"{args.readme}: {exc}; add them where the table goes", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
