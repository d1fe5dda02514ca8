"""A bench result as Markdown tables (for docs/benchmark.md and closing notes).

    python bench/report.py bench-results/latest.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["markdown", "main"]


def _f(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def markdown(d: dict[str, Any]) -> str:
    """The whole result as Markdown."""
    m = d["machine"]
    s = d["settings"]
    out = [f"Run of {d['started']} on {m.get('cpu', '?')}, {m.get('nproc')} cores, {m.get('mem_total_mb')} MB, "
           f"Linux {m.get('kernel')}, Python {m.get('python')}, {m.get('openssl')}, cryptography "
           f"{m.get('cryptography')}; load average at start {' '.join(m.get('loadavg_at_start', []))}. "
           f"Target: `{d['target']}`; {s['repeat']} runs of {s['duration']} s per figure (medians), "
           f"keep-alive generator {s['keepalive_gen']}.", ""]
    if d.get("micro"):
        out += ["| CA key | CSR verifications/s (one core) | certificate signatures/s (one core) | "
                "crypto ms per enrollment | token alone: signatures/s |", "|---|---|---|---|---|"]
        for k, v in d["micro"].items():
            out.append(f"| {k} | {_f(v['csr_verify_per_s'])} | {_f(v['cert_sign_per_s'])} | "
                       f"{_f(v['crypto_ms_per_enroll'], 3)} | {_f(v.get('token_sign_per_s'))} |")
        out.append("")
    if d.get("ceiling"):
        out += ["| ceiling | clients | full handshakes/s | p50 ms | p99 ms | sessions resumed | server CPU s |",
                "|---|---|---|---|---|---|---|"]
        for c in d["ceiling"]:
            out.append(f"| openssl s_server -www | {c['concurrency']} | {_f(c['rate_per_s'])} | {_f(c['p50_ms'], 1)} | "
                       f"{_f(c['p99_ms'], 1)} | {c['sessions_reused']} of {c['connections']} | "
                       f"{_f(c.get('server_cpu_s'), 2)} |")
        out.append("")
    out += ["| mode | CA key | store | clients | per second | p50 ms | p99 ms | server CPU ms/req | "
            "context switches/req | vs s_server | resumed | runs (per second) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ceil = {c["concurrency"]: c["rate_per_s"] for c in d.get("ceiling", [])}
    for r in d["runs"]:
        ceil_rate = r.get("ceiling_rate_per_s") or ceil.get(r["concurrency"])
        ratio = (f"{r['rate_per_s'] / ceil_rate:.0%} of {ceil_rate:,.0f}"
                 if r["mode"] == "new" and ceil_rate else "")
        reps = " / ".join(_f(x["rate_per_s"]) for x in r.get("repeats", []))
        resumed = "" if r.get("sessions_reused") is None else f"{r['sessions_reused']} of {r['connections']}"
        out.append(f"| {r['mode']} | {r['key']} | {r['store_rows']:,} | {r['concurrency']} | {_f(r['rate_per_s'])} | "
                   f"{_f(r['p50_ms'], 1)} | {_f(r['p99_ms'], 1)} | {_f(r['server_cpu_ms_per_request'], 2)} | "
                   f"{_f(r.get('server_switches_per_request'), 1)} | {ratio} | {resumed} | {reps} |")
    out.append("")
    if d.get("rss_mb"):
        out += ["| CA key | store | peak RSS per process (MB) |", "|---|---|---|"]
        for e in d["rss_mb"]:
            out.append(f"| {e['key']} | {e['store_rows']:,} | "
                       f"{', '.join(f'{k} {v:.1f}' for k, v in e['peak'].items())} |")
        out.append("")
    out += ["| target | measured | |", "|---|---|---|"]
    for t in d.get("targets", []):
        out.append(f"| {t['name']} | {t['value']} | {'met' if t['met'] else 'missed' if t['met'] is False else '-'} |")
    out.append("")
    for p in d.get("profiles", []):
        split = ", ".join(f"{k} {v:.2f}" for k, v in p["cpu_ms_per_request"].items())
        out += [f"Profile ({p['kind']}), {p['mode']}, {p['key']}, store {p['store_rows']:,}, {p['concurrency']} "
                f"clients: CPU ms per request by thread: {split}. Where the GIL was held (self):", ""]
        out += [f"    {share:5.1f}%  {name}" for name, share in p["self"][:12]]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print the Markdown of a result file."""
    args = argv if argv is not None else sys.argv[1:]
    with open(args[0] if args else "bench-results/latest.json") as f:
        print(markdown(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
