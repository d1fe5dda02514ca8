"""The PNG: enrollments per second and p99 latency against concurrency.

Colour is the mode (new connection, keep-alive), the line style the CA key,
the marker the store size; ``openssl s_server`` (the handshake ceiling) is
the black dashed line.  /cacerts rates are an order of magnitude higher and
are written in a note instead of squashing the enrollment lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]

_COLOURS = {"new": "tab:blue", "keepalive": "tab:orange"}
_STYLES = {"p256": "-", "rsa2048": ":"}


def plot(result: dict[str, Any], path: Path) -> bool:
    """Write the plot; False when matplotlib is missing (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.4))
    series: dict[tuple[str, str, int], list[tuple[int, float, float]]] = {}
    notes = []
    for r in result["runs"]:
        if r["mode"] == "cacerts":
            notes.append(f"/cacerts {r['key']} store={r['store_rows']:,} c={r['concurrency']}: "
                         f"{r['rate_per_s']:,.0f}/s")
            continue
        series.setdefault((r["mode"], r["key"], r["store_rows"]), []).append(
            (r["concurrency"], r["rate_per_s"], r["p99_ms"]))
    stores = sorted({k[2] for k in series})
    markers = dict(zip(stores, "os^vD"))
    for (mode, key, rows), pts in sorted(series.items()):
        pts.sort()
        kw = dict(color=_COLOURS.get(mode, "tab:green"), linestyle=_STYLES.get(key, "-."),
                  marker=markers.get(rows, "x"), label=f"{mode} {key} store={rows:,}")
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], **kw)
        ax2.plot(xs, [p[2] for p in pts], **kw)
    ceiling = sorted((c["concurrency"], c["rate_per_s"], c["p99_ms"]) for c in result.get("ceiling", []))
    if ceiling:
        kw = dict(color="black", linestyle="--", marker=".", label="openssl s_server full handshakes")
        ax1.plot([c[0] for c in ceiling], [c[1] for c in ceiling], **kw)
        ax2.plot([c[0] for c in ceiling], [c[2] for c in ceiling], **kw)
    for ax, title, ylabel in ((ax1, "enrollments per second", "per second"), (ax2, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax1.set_ylim(bottom=0)
    ax2.set_yscale("log")
    ax1.legend(fontsize=7, loc="upper left")
    if notes:
        ax1.text(0.99, 0.01, "\n".join(notes[:6]), transform=ax1.transAxes, fontsize=7, ha="right", va="bottom")
    m = result.get("machine", {})
    fig.suptitle(f"estkit bench: {result.get('target', '')}; {m.get('cpu', '')}, {m.get('nproc', '?')} cores; "
                 f"{result.get('started', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
