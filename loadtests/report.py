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
#: CPU per unit of work, per process: (scenario, figure prefix, label). Lower is better.
CPU_HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("small_gets", "cpu_us_per_req_", "CPU µs per 1 KiB GET, 64 conns"),
    ("latency", "cpu_us_per_req_", "CPU µs per request at fixed rate (each alone)"),
    ("download", "cpu_s_per_gib_", "CPU s per GiB downloaded"),
    ("upload", "cpu_s_per_gib_", "CPU s per GiB uploaded"),
)

#: The footprint scenario's connector totals (supervisor and workers, or cloudflared), MiB.
FOOTPRINT = (
    "idle_rss_connector_mib",
    "idle_pss_connector_mib",
    "ws_rss_connector_mib",
    "ws_pss_connector_mib",
)

#: The connector's footprint goals (issue "Connector footprint", CPU half): the connector's
#: CPU (supervisor and workers together) at most this share of cloudflared's on the same edge
#: and transport, per unit of work: (scenario, figure prefix, label, at most this ratio).
CPU_GOALS: tuple[tuple[str, str, str, float], ...] = (
    ("small_gets", "cpu_us_per_req_", "connector CPU per 1 KiB GET, 64 conns", 0.5),
    ("latency", "cpu_us_per_req_", "connector CPU per request at fixed rate", 0.5),
    ("download", "cpu_s_per_gib_", "connector CPU per GiB downloaded", 0.5),
    ("upload", "cpu_s_per_gib_", "connector CPU per GiB uploaded", 0.5),
)


def transport(path: str) -> str | None:
    """``quic`` or ``http2`` for a connector path (``-quic`` paths run QUIC), else None."""
    if path.endswith("-quic"):
        return "quic"
    return "http2" if path.startswith(("adit", "cloudflared")) else None


def counterparts(path: str, names: list[str] | dict[str, Any]) -> list[str]:
    """The paths ``path`` is compared with: direct, ssh, cloudflared on the same transport
    (for adit), and the same connector over HTTP/2 (for a QUIC path)."""
    out = ["direct", "ssh"]
    kind = transport(path)
    if path.startswith("adit") and kind is not None:
        out.append("cloudflared-quic" if kind == "quic" else "cloudflared")
    if kind == "quic":
        out.append(path.removesuffix("-quic"))
    return [p for p in out if p != path and p in names]


def _value(paths: dict[str, Any], path: str, scenario: str, figure: str) -> float | None:
    value = paths.get(path, {}).get(scenario, {}).get(figure)
    return float(value) if isinstance(value, int | float) else None


def _cpu(paths: dict[str, Any], path: str, scenario: str, prefix: str, side: str) -> float | None:
    """The ``edge``'s figure, or the ``connector``'s (supervisor and workers, or cloudflared,
    summed)."""
    figures = paths.get(path, {}).get(scenario, {})
    values = [
        float(v)
        for k, v in figures.items()
        if k.startswith(prefix)
        and isinstance(v, int | float)
        and ((k == prefix + "edge") == (side == "edge"))
    ]
    return round(sum(values), 2) if values else None


def ratios(paths: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{scenario.figure: {path: {vs_<peer>: path/peer}}}`` for every path and each of its
    :func:`counterparts` with figures; CPU figures as ``cpu.<scenario>.<edge|connector>``
    (against the other connectors only)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    rows: list[tuple[str, Any, bool]] = [
        (f"{scenario}.{figure}", lambda p, s=scenario, f=figure: _value(paths, p, s, f), False)
        for scenario, figure, _label, _higher in HEADLINE
    ]
    rows += [
        (
            f"cpu.{scenario}.{side}",
            lambda p, s=scenario, x=prefix, d=side: _cpu(paths, p, s, x, d),
            True,
        )
        for scenario, prefix, _label in CPU_HEADLINE
        for side in ("edge", "connector")
    ]
    rows += [
        (f"footprint.{figure}", lambda p, f=figure: _value(paths, p, "footprint", f), True)
        for figure in FOOTPRINT
    ]
    for key, get, connectors_only in rows:
        for path in paths:
            value = get(path)
            if value is None:
                continue
            for peer in counterparts(path, paths):
                if connectors_only and transport(peer) is None:
                    continue  # direct and ssh have no edge nor connector
                other = get(peer)
                if other is None or other == 0:
                    continue
                out.setdefault(key, {}).setdefault(path, {})[f"vs_{peer}"] = round(value / other, 3)
    return out


def goals(paths: dict[str, Any]) -> dict[str, Any]:
    """The goals' figures for ``results.json``: ``{"connector_cpu": {scenario: {adit path:
    {"peer", "adit", "cloudflared", "ratio", "goal", "met"}}}}``, each adit path against
    cloudflared over HTTP/2, the default transport (QUIC's floor is aioquic's: OPTIMISATION.md,
    "QUIC"). CPU in the scenario's unit: µs per request, s per GiB."""
    cpu: dict[str, dict[str, dict[str, Any]]] = {}
    for name in (n for n in paths if n.startswith("adit") and transport(n) == "http2"):
        for peer in (p for p in counterparts(name, paths) if p.startswith("cloudflared")):
            for scenario, prefix, _label, goal in CPU_GOALS:
                a = _cpu(paths, name, scenario, prefix, "connector")
                c = _cpu(paths, peer, scenario, prefix, "connector")
                if a is None or not c:
                    continue
                ratio = round(a / c, 3)
                cpu.setdefault(scenario, {})[name] = {
                    "peer": peer,
                    "adit": a,
                    "cloudflared": c,
                    "ratio": ratio,
                    "goal": goal,
                    "met": ratio <= goal,
                }
    return {"connector_cpu": cpu, "access_cpu": access_goals(paths)}


#: Issue 18: Access (the policy check on a valid session cookie; its token was verified and
#: minted once per session) adds at most this share of the edge's CPU per request.
ACCESS_GOAL = 1.10


def access_goals(paths: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{scenario: {"plain", "access", "ratio", "goal", "met"}}``: the edge's CPU µs per
    request on ``adit-1w-access`` against ``adit-1w`` (the same hostname's origin without
    Access), with requests/s and p50 alongside."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in ("small_gets", "latency"):
        plain = _cpu(paths, "adit-1w", scenario, "cpu_us_per_req_", "edge")
        access = _cpu(paths, "adit-1w-access", scenario, "cpu_us_per_req_", "edge")
        if plain is None or not plain or access is None:
            continue
        ratio = round(access / plain, 3)
        figure = "rps" if scenario == "small_gets" else "p50_ms"
        out[scenario] = {
            "plain": plain,
            "access": access,
            "ratio": ratio,
            "goal": ACCESS_GOAL,
            "met": ratio <= ACCESS_GOAL,
            figure: {
                "plain": _value(paths, "adit-1w", scenario, figure),
                "access": _value(paths, "adit-1w-access", scenario, figure),
            },
        }
    pairs = paths.get("adit-1w-access", {}).get("access_pairs", {})
    if "ratio_median" in pairs:
        # One edge, one connector, the hostnames in turn: the figures that hold up. The same
        # request bytes with and without Access (the goal: deciding and asserting), then the
        # same against a request without the visitor's cookie.
        for scenario, base, key in (
            ("access_pairs", "cookie", ""),
            ("access_pairs_with_cookie", "plain", "_with_cookie"),
        ):
            ratio = pairs[f"ratio{key}_median"]
            out[scenario] = {
                "plain": pairs[f"cpu_us_per_req_edge_{base}"],
                "access": pairs["cpu_us_per_req_edge_access"],
                "ratio": ratio,
                "goal": ACCESS_GOAL,
                "met": ratio <= ACCESS_GOAL,
                "ratio of each round": pairs[f"ratios{key}"],
            }
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
    adit = [n for n in names if n.startswith("adit")]
    pairs = [(a, p) for a in adit for p in counterparts(a, names) if p.startswith("cloudflared")]
    lines += _ratio_table(
        "adit against cloudflared on the same transport and the same edge (adit ÷ cloudflared)",
        paths,
        pairs,
    )
    pairs = [(q, h) for q in names if transport(q) == "quic" for h in counterparts(q, names)]
    pairs = [(q, h) for q, h in pairs if transport(h) == "http2"]
    lines += _ratio_table("QUIC against HTTP/2, same connector (QUIC ÷ HTTP/2)", paths, pairs)
    pairs = [(a, "ssh") for a in adit if "ssh" in names]
    lines += _ratio_table("adit against ssh -R (adit ÷ ssh)", paths, pairs, cpu=False)
    lines += _cpu_table(paths, names)
    lines += ["", "## Memory (RSS, MiB): idle, and with the idle WebSockets open", ""]
    lines.append("| path | process | idle | with WebSockets |")
    lines.append("|---|---|---|---|")
    for path in names:
        idle = paths[path].get("idle_rss_mb", {})
        ws = paths[path].get("websockets", {})
        for role, value in idle.items():
            lines.append(f"| {path} | {role} | {_fmt(value)} | {_fmt(ws.get(f'rss_{role}_mb'))} |")
    lines += _footprint_table(paths, names)
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


def _ratio_table(
    title: str, paths: dict[str, Any], pairs: list[tuple[str, str]], *, cpu: bool = True
) -> list[str]:
    """One column per pair (``a ÷ b``), a row per headline figure and (``cpu``) per CPU
    figure of the edge and of the connector."""
    if not pairs:
        return []
    lines = ["", f"## {title}", ""]
    lines.append(
        "Rates: >1 is better. Times and CPU: <1 is better. Connector CPU: supervisor and workers"
        " together, or cloudflared."
        if cpu
        else "Rates: >1 is better. Times: <1 is better."
    )
    lines.append("")
    lines.append("| figure | " + " | ".join(f"{a} ÷ {b}" for a, b in pairs) + " |")
    lines.append("|---|" + "---|" * len(pairs))
    for scenario, figure, label, _higher in HEADLINE:
        row = []
        for a, b in pairs:
            x, y = _value(paths, a, scenario, figure), _value(paths, b, scenario, figure)
            row.append(f"{x / y:.2f}" if x is not None and y else "–")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    for scenario, prefix, label in CPU_HEADLINE if cpu else ():
        for side in ("edge", "connector"):
            row = []
            for a, b in pairs:
                x = _cpu(paths, a, scenario, prefix, side)
                y = _cpu(paths, b, scenario, prefix, side)
                row.append(f"{x / y:.2f}" if x is not None and y else "–")
            lines.append(f"| {label}, {side} | " + " | ".join(row) + " |")
    return lines


def _cpu_table(paths: dict[str, Any], names: list[str]) -> list[str]:
    """Every process's CPU per request and per GiB, per path."""
    lines = ["", "## CPU per request and per GiB, each process", ""]
    lines.append(
        "| path | process | µs per GET, 64 conns | µs per request at fixed rate"
        " | s per GiB down | s per GiB up |"
    )
    lines.append("|---|---|---|---|---|---|")
    for path in names:
        roles = list(paths[path].get("idle_rss_mb", {}))
        for role in roles:
            cells = [
                _fmt(_value(paths, path, scenario, f"{prefix}{role}"))
                for scenario, prefix, _label in CPU_HEADLINE
            ]
            if any(c != "–" for c in cells):
                lines.append(f"| {path} | {role} | " + " | ".join(cells) + " |")
    return lines


def _footprint_table(paths: dict[str, Any], names: list[str]) -> list[str]:
    """The footprint scenario: each process's RSS and PSS idle and with the WebSockets open."""
    rows = []
    for path in names:
        figures = paths[path].get("footprint", {})
        roles = [k[len("idle_rss_") : -len("_mib")] for k in figures if k.startswith("idle_rss_")]
        for role in roles:
            cells = [
                _fmt(figures.get(f"{when}_{kind}_{role}_mib"))
                for when in ("idle", "ws")
                for kind in ("rss", "pss")
            ]
            rows.append(f"| {path} | {role} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "## Footprint (MiB): RSS and PSS, idle and with the idle WebSockets open",
        "",
        "PSS divides each shared page (the interpreter, shared libraries) among the processes"
        " that map it; `connector` is the supervisor and workers together (or cloudflared).",
        "",
        "| path | process | idle RSS | idle PSS | RSS with WebSockets | PSS with WebSockets |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def footprint_goals(paths: dict[str, Any]) -> list[str]:
    """Connector idle memory ≤ 1.0× cloudflared's (RSS and PSS, over the same transport), and
    a worker ≤ 45 MB with the idle WebSockets open."""
    out = []
    for name in (n for n in paths if n.startswith("adit")):
        for peer in (p for p in counterparts(name, paths) if p.startswith("cloudflared")):
            for kind in ("rss", "pss"):
                a = _value(paths, name, "footprint", f"idle_{kind}_connector_mib")
                c = _value(paths, peer, "footprint", f"idle_{kind}_connector_mib")
                if a is not None and c:
                    verdict = "met" if a <= c else "NOT met"
                    out.append(
                        f"- idle {kind.upper()} of supervisor + workers ≤ 1.0× {peer}'s"
                        f" ({name}): {a} ÷ {c} MiB = {a / c:.2f}× → {verdict}"
                    )
        figures = paths[name].get("footprint", {})
        workers = [
            float(v)
            for k, v in figures.items()
            if k.startswith("ws_rss_worker") and isinstance(v, int | float)
        ]
        if workers:
            worst_mb = max(workers) * 2**20 / 1e6
            verdict = "met" if worst_mb <= 45 else "NOT met"
            out.append(
                f"- worker RSS ≤ 45 MB with the idle WebSockets open ({name}): max"
                f" {max(workers)} MiB = {worst_mb:.1f} MB → {verdict}"
            )
    return out


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
    out = footprint_goals(paths)
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
    for name in (n for n in paths if n.startswith("adit")):
        for peer in (p for p in counterparts(name, paths) if p.startswith("cloudflared")):
            worse = []
            for scenario, figure, label, higher in HEADLINE:
                a = _value(paths, name, scenario, figure)
                c = _value(paths, peer, scenario, figure)
                if a is None or c is None:
                    continue
                if (a < c) if higher else (a > c):
                    worse.append(label)
            verdict = "met" if not worse else "NOT met: slower in " + "; ".join(worse)
            out.append(f"- at least as fast as {peer} ({name}): {verdict}")
            more = [
                f"{label} ({side})"
                for scenario, prefix, label in CPU_HEADLINE
                for side in ("edge", "connector")
                if (a := _cpu(paths, name, scenario, prefix, side)) is not None
                and (c := _cpu(paths, peer, scenario, prefix, side)) is not None
                and a > c
            ]
            verdict = "yes" if not more else "no: more in " + "; ".join(more)
            out.append(f"- no more CPU than {peer} ({name}): {verdict}")
    for scenario, gate in access_goals(paths).items():
        if scenario.startswith("access_pairs"):
            rounds = gate["ratio of each round"]
            how = (
                "Access hostname ÷ plain hostname, one connector, the same request bytes"
                if scenario == "access_pairs"
                else "Access hostname ÷ plain hostname without the cookie, one connector"
            )
            extra = f"median of {len(rounds)} rounds: " + ", ".join(f"{r:.2f}" for r in rounds)
        else:
            how = "adit-1w-access ÷ adit-1w"
            extra = ", ".join(
                f"{k} {v['plain']} → {v['access']}" for k, v in gate.items() if isinstance(v, dict)
            )
        out.append(
            f"- Access adds ≤ {100 * (gate['goal'] - 1):.0f}% edge CPU per request "
            f"({scenario}, {how}): {gate['access']:g} µs against "
            f"{gate['plain']:g} µs = {gate['ratio']:.2f}× ({extra}) → "
            f"{'met' if gate['met'] else 'NOT met'}"
        )
    for scenario, _prefix, label, goal in CPU_GOALS:
        for name, figure in goals(paths)["connector_cpu"].get(scenario, {}).items():
            out.append(
                f"- {label} ≤ {goal:g}× {figure['peer']}'s ({name}): {figure['adit']:g} against"
                f" {figure['cloudflared']:g} = {figure['ratio']:.2f}× → "
                f"{'met' if figure['met'] else 'NOT met'}"
            )
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
