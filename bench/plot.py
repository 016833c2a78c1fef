"""The plot in docs/PERFORMANCE.md, from one bench run: per system, against N, the time for one
message to reach every client (p50, with the p99 as a dashed line) and the burst's deliveries/s."""

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
    fig, (single, burst) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
    for i, name in enumerate(systems):
        color = f"C{i}"
        points = sorted(
            (r["n"], r["p50_ms"], r["p99_ms"], r["deliveries_per_s"]) for r in rows if r["system"] == name
        )
        ns = [p[0] for p in points]
        single.plot(ns, [p[1] for p in points], marker="o", color=color, label=name)
        single.plot(ns, [p[2] for p in points], linestyle="--", color=color, alpha=0.6)
        burst.plot(ns, [p[3] for p in points], marker="o", color=color, label=name)
    single.set_ylabel("one message: time to all clients, ms\n(p50 solid, p99 dashed; lower is better)")
    single.set_title("One message at a time")
    burst.set_ylabel("deliveries per second (higher is better)")
    burst.set_title("Burst of 20 x 100 B (batching helps)")
    for ax in (single, burst):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("connected clients (N)")
        ax.grid(True, which="both", alpha=0.3)
    single.legend(fontsize="small")
    fig.suptitle("Fan-out on a 2-core machine (load generator on the same cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
