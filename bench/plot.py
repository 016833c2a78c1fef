"""The plot in docs/PERFORMANCE.md: deliveries/s against N, per system, from one bench run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def plot(results: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r if isinstance(r, dict) else r.__dict__ for r in results]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in systems:
        points = sorted((r["n"], r["deliveries_per_s"]) for r in rows if r["system"] == name)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connected clients (N)")
    ax.set_ylabel("deliveries per second (burst of 20 x 100 B)")
    ax.set_title("Fan-out throughput, one server process, 2-core machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
