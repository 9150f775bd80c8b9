"""Latency percentiles per path as a PNG (run with the bench venv's python: matplotlib)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt


def main(results: Path) -> None:
    """Write ``latency.png`` next to ``results.json``."""
    data = json.loads(results.read_text())
    curves: dict[str, list[float]] = data.get("latency_curves_ms", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    names = list(curves)
    for name in names:
        values = curves[name]
        pct = [100 * i / len(values) for i in range(len(values))]
        left.plot(pct, values, label=name)
    left.set_xlabel("percentile")
    left.set_ylabel("latency, ms")
    left.set_yscale("log")
    left.set_title("latency at a fixed moderate rate (h2load --rps)")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    marks = ("p50_ms", "p90_ms", "p99_ms")
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        figures = data["paths"].get(name, {}).get("latency", {})
        values = [float(figures.get(m) or 0) for m in marks]
        positions = [i + index * width for i in range(len(marks))]
        right.bar(positions, values, width, label=name)
    right.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(marks))])
    right.set_xticklabels(["p50", "p90", "p99"])
    right.set_ylabel("ms")
    right.set_title("percentiles per path")
    right.legend()
    fig.tight_layout()
    fig.savefig(results.parent / "latency.png", dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
