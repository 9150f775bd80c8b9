"""The report of a run: ratios, the markdown tables, the goals, and profile summaries."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

#: (scenario, figure, label, higher is better)
HEADLINE: tuple[tuple[str, str, str, bool], ...] = (
    ("small_gets", "rps", "1 KiB GETs, 64 conns, requests/s", True),
    ("download", "mbps", "1 GiB download, MB/s", True),
    ("upload", "mbps", "1 GiB upload, MB/s", True),
    ("latency", "p50_ms", "latency p50 at fixed rate, ms", False),
    ("latency", "p90_ms", "latency p90 at fixed rate, ms", False),
    ("latency", "p99_ms", "latency p99 at fixed rate, ms", False),
    ("startup", "first_registered_s", "start → first registered connection, s", False),
    ("startup", "first_ok_s", "start → first 200 through the edge, s", False),
    ("recovery", "ok_after_edge_ready_s", "edge restarted → first 200, s", False),
)
PEERS = ("direct", "ssh", "cloudflared")


def _value(paths: dict[str, Any], path: str, scenario: str, figure: str) -> float | None:
    value = paths.get(path, {}).get(scenario, {}).get(figure)
    return float(value) if isinstance(value, int | float) else None


def ratios(paths: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{scenario.figure: {path: {vs_<peer>: path/peer}}}`` for every pair with figures."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, figure, _label, _higher in HEADLINE:
        key = f"{scenario}.{figure}"
        for path in paths:
            value = _value(paths, path, scenario, figure)
            if value is None:
                continue
            for peer in PEERS:
                other = _value(paths, peer, scenario, figure)
                if peer == path or other is None or other == 0:
                    continue
                out.setdefault(key, {}).setdefault(path, {})[f"vs_{peer}"] = round(value / other, 3)
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    """The human-readable report of ``results.json``."""
    meta = data["meta"]
    paths: dict[str, Any] = data["paths"]
    names = list(paths)
    lines = [
        "# adit benchmark",
        "",
        f"{meta['date']} · {meta['cpus']} CPUs ({meta['cpu_model']}) · "
        f"{meta['memory_gib']} GiB · load average at start {meta['loadavg_start']}, "
        f"at end {meta.get('loadavg_end')} · {meta.get('duration_s')} s",
        "",
    ]
    if meta.get("note"):
        lines += [str(meta["note"]), ""]
    lines += _calibration(meta)
    lines += ["## Figures (ratio against direct in brackets)", ""]
    lines.append("| scenario | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for scenario, figure, label, _higher in HEADLINE:
        cells = []
        for path in names:
            value = _value(paths, path, scenario, figure)
            direct = _value(paths, "direct", scenario, figure)
            cell = _fmt(value)
            if value is not None and direct and path != "direct":
                cell += f" ({value / direct:.2f}×)"
            error = paths.get(path, {}).get(scenario, {}).get("error")
            if error:
                cell += " ⚠"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## adit against its peers (adit ÷ peer; >1 is better for rates)", ""]
    adit = [n for n in names if n.startswith("adit")]
    peers = [p for p in ("ssh", "cloudflared") if p in names]
    if adit and peers:
        header = [f"{a} ÷ {p}" for a in adit for p in peers]
        lines.append("| scenario | " + " | ".join(header) + " |")
        lines.append("|---|" + "---|" * len(header))
        for scenario, figure, label, _higher in HEADLINE:
            row = []
            for a in adit:
                for p in peers:
                    x, y = _value(paths, a, scenario, figure), _value(paths, p, scenario, figure)
                    row.append(f"{x / y:.2f}" if x is not None and y else "–")
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += ["", "## Memory (RSS, MiB): idle, and with the idle WebSockets open", ""]
    lines.append("| path | process | idle | with WebSockets |")
    lines.append("|---|---|---|---|")
    for path in names:
        idle = paths[path].get("idle_rss_mb", {})
        ws = paths[path].get("websockets", {})
        for role, value in idle.items():
            lines.append(f"| {path} | {role} | {_fmt(value)} | {_fmt(ws.get(f'rss_{role}_mb'))} |")
    lines += ["", "## CPU during the small-GET run (cores busy)", ""]
    for path in names:
        gets = paths[path].get("small_gets", {})
        cpu = ", ".join(f"{k[4:]} {v}" for k, v in gets.items() if k.startswith("cpu_"))
        if cpu:
            lines.append(f"- {path}: {cpu}")
    lines += ["", "## CPU per request at the fixed rate (µs; each request alone)", ""]
    for path in names:
        rated = paths[path].get("latency", {})
        cpu = ", ".join(f"{k[15:]} {v}" for k, v in rated.items() if k.startswith("cpu_us_"))
        if cpu:
            lines.append(f"- {path}: {cpu}")
    lines += ["", "## Goals", ""]
    lines += _goals(paths)
    lines += ["", "## Every figure", ""]
    for path in names:
        for scenario, figures in paths[path].items():
            shown = ", ".join(f"{k}={v}" for k, v in figures.items())
            lines.append(f"- **{path}** {scenario}: {shown}")
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in meta["versions"].items()]
    return "\n".join(lines) + "\n"


def _calibration(meta: dict[str, Any]) -> list[str]:
    """The machine's cold factor at the start and the end (``calibration.py``)."""
    lines = []
    for when in ("start", "end"):
        figures = meta.get(f"calibration_{when}")
        if figures:
            lines.append(
                f"- Python work unit at the {when}: {figures['unit_us_gap_0ms']} µs back to back,"
                f" {figures['unit_us_gap_1ms']} µs after 1 ms idle,"
                f" {figures['unit_us_gap_5ms']} µs after 5 ms idle"
                f" (cold factor {figures['cold_factor_5ms']}×)"
            )
    if lines:
        lines.append(
            "- The fixed-rate scenario's requests come ~5 ms apart: every process on the path"
            " pays about the cold factor on its CPU per request."
        )
        lines.append("")
    return lines


def _goals(paths: dict[str, Any]) -> list[str]:
    out = []
    best_rps = max(
        (v for n in paths if n.startswith("adit") if (v := _value(paths, n, "small_gets", "rps"))),
        default=None,
    )
    ssh = _value(paths, "ssh", "small_gets", "rps")
    if best_rps and ssh:
        ok = best_rps >= 3 * ssh
        out.append(
            f"- requests/s ≥ 3× OpenSSH: {best_rps / ssh:.2f}× → {'met' if ok else 'NOT met'}"
        )
    for scenario in ("download", "upload"):
        direct = _value(paths, "direct", scenario, "mbps")
        for name in (n for n in paths if n.startswith("adit")):
            value = _value(paths, name, scenario, "mbps")
            if value is not None and direct:
                ok = value >= 0.5 * direct
                out.append(
                    f"- {scenario} ≥ 50% of direct ({name}): {100 * value / direct:.0f}% → "
                    f"{'met' if ok else 'NOT met'}"
                )
    direct_p50 = _value(paths, "direct", "latency", "p50_ms")
    for name in (n for n in paths if n.startswith("adit")):
        p50 = _value(paths, name, "latency", "p50_ms")
        if p50 is not None and direct_p50 is not None:
            added = p50 - direct_p50
            out.append(
                f"- added p50 ≤ 1 ms ({name}): +{added:.2f} ms → "
                f"{'met' if added <= 1 else 'NOT met'}"
            )
        ws = paths.get(name, {}).get("websockets", {})
        workers = [v for k, v in ws.items() if k.startswith("rss_worker") and v is not None]
        if workers:
            worst = max(workers)
            # The goal is in MB (10^6 bytes); RSS is reported in MiB.
            worst_mb = worst * 2**20 / 1e6
            out.append(
                f"- worker RSS ≤ 60 MB with {ws.get('opened')} idle WebSockets ({name}): "
                f"max {worst} MiB = {worst_mb:.1f} MB → {'met' if worst_mb <= 60 else 'NOT met'}"
            )
    if "cloudflared" in paths:
        for name in (n for n in paths if n.startswith("adit")):
            worse = []
            for scenario, figure, label, higher in HEADLINE:
                a = _value(paths, name, scenario, figure)
                c = _value(paths, "cloudflared", scenario, figure)
                if a is None or c is None:
                    continue
                if (a < c) if higher else (a > c):
                    worse.append(label)
            verdict = "met" if not worse else "NOT met: slower in " + "; ".join(worse)
            out.append(f"- at least as fast as cloudflared ({name}): {verdict}")
    return out


def summarise_profiles(files: list[str], out: Path) -> None:
    """Top functions (self and total samples) of each py-spy ``raw`` profile."""
    lines = []
    for name in files:
        path = Path(name)
        if not path.exists():
            continue
        own: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        samples = 0
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            samples += count
            frames = stack.split(";")
            own[frames[-1]] += count
            for frame in set(frames):
                total[frame] += count
        lines.append(f"== {path.name}: {samples} samples")
        lines.append("-- self")
        lines += [f"{100 * c / samples:5.1f}% {f}" for f, c in own.most_common(25)]
        lines.append("-- total")
        lines += [f"{100 * c / samples:5.1f}% {f}" for f, c in total.most_common(40)]
        lines.append("")
    out.write_text("\n".join(lines))
