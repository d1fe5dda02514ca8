"""The PNG: throughput and p99 latency against concurrency, one line per
(mode, CA key, store size), the ``openssl s_server`` ceiling dashed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(result: dict[str, Any], path: Path) -> bool:
    """Write the plot; False when matplotlib is missing (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in result["runs"]:
        name = f"{r['mode']} {r['key']} store={r['store_rows']:,}"
        series.setdefault(name, []).append((r["concurrency"], r["rate_per_s"], r["p99_ms"]))
    for c in result.get("ceiling", []):
        series.setdefault(f"openssl s_server ({c['key']} dir TLS cert)", []).append(
            (c["concurrency"], c["rate_per_s"], c["p99_ms"]))
    for name, pts in sorted(series.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        style = "--" if name.startswith("openssl") else "-"
        ax1.plot(xs, [p[1] for p in pts], style, marker="o", label=name)
        ax2.plot(xs, [p[2] for p in pts], style, marker="o", label=name)
    for ax, title, ylabel in ((ax1, "throughput", "requests per second"), (ax2, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=7, loc="best")
    m = result.get("machine", {})
    fig.suptitle(f"estkit bench: {result.get('target', '')}; {m.get('cpu', '')}, {m.get('nproc', '?')} cores",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
