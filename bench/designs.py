"""``bench.py --designs``: estkit serve beside the prototype front ends of
bench/frontends.py (issue 17), on one P-256 directory (empty store), in
turns: each turn runs ``openssl s_server`` (new connections), then every
design, in an order that rotates from turn to turn, so that a drift of the
machine's speed falls on every design alike."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import ceiling
import fixture
from runs import Server, Target, measure, medians, profile_run, run_loadgen, warm_logins

__all__ = ["run_designs"]


def run_designs(a: argparse.Namespace, result: dict[str, Any], csrs: Path, work: Path) -> None:
    designs = [d for d in a.designs.split(",") if d]
    modes = [m for m in a.modes.split(",") if m in ("new", "keepalive")]
    d = fixture.make_dir(work / "p256-0", "p256", workers=a.workers)
    result["micro"]["p256"] = ceiling.crypto_micro(d, csrs)
    print(ceiling.describe_micro("p256", result["micro"]["p256"]), flush=True)
    result["target"] = "designs: " + ", ".join(designs)
    servers: dict[str, Server] = {}
    try:
        with ceiling.s_server(d / "tls/server.pem", d / "tls/server.key") as (sport, sproc):
            ceil_t = Target("127.0.0.1", sport, "", "", server_pid=sproc.pid)
            for name in designs:
                servers[name] = Server(d, a.workers, design="" if name == "serve" else name)
            targets = {name: Target("127.0.0.1", srv.port, "/.well-known/est", str(d / "ca.pem"),
                                    user=f"{fixture.BENCH_USER}:{fixture.BENCH_PASSWORD}", server_pid=srv.proc.pid)
                       for name, srv in servers.items()}
            for t in targets.values():
                warm_logins(t, csrs, a.workers)
            for mode in modes:
                for c in [int(x) for x in a.concurrency.split(",")]:
                    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in designs}
                    ceilings: list[float] = []
                    for i in range(a.repeat):
                        if mode == "new":
                            ceilings.append(run_loadgen(ceil_t, mode="new", method="GET", path="/", bodies=None,
                                                        concurrency=c, duration=a.duration,
                                                        warmup=a.warmup)["rate_per_s"])
                        k = i % len(designs)
                        for name in designs[k:] + designs[:k]:
                            runs[name].append(measure(targets[name], mode, c, a, csrs, work))
                    for name in designs:
                        r = medians(runs[name])
                        r.update(key="p256", store_rows=0, concurrency=c, design=name)
                        if ceilings:
                            r["ceiling_rate_per_s"] = statistics.median(ceilings)
                            r["ceiling_repeats"] = ceilings
                        result["runs"].append(r)
                        ratio = f"  {r['rate_per_s'] / r['ceiling_rate_per_s']:.0%} of s_server " \
                                f"{r['ceiling_rate_per_s']:.0f}/s" if ceilings else ""
                        print(f"  {mode:9s} {name:12s} c={c:<3} {r['rate_per_s']:8.1f}/s  p99 {r['p99_ms']:6.1f} ms  "
                              f"cpu {r['server_cpu_ms_per_request'] or 0:.2f} ms/req  "
                              f"cs {r['server_switches_per_request'] or 0:.1f}/req{ratio}", flush=True)
            for name, srv in servers.items():
                for mode in modes if a.profile else []:
                    prof = profile_run(targets[name], srv, mode, 8, a, csrs, work, Path(a.out),
                                       f"{mode}-{name.replace('/', '_')}")
                    if prof:
                        prof.update(key="p256", store_rows=0, design=name)
                        result["profiles"].append(prof)
                        split = ", ".join(f"{k} {v:.2f}" for k, v in prof["cpu_ms_per_request"].items())
                        print(f"  profile   {mode:9s} {name:12s} CPU ms/request by thread: {split}; "
                              f"{prof['file']}", flush=True)
            for name, srv in servers.items():
                result["rss_mb"].append({"key": "p256", "store_rows": 0, "design": name, "peak": srv.rss()})
    finally:
        for srv in servers.values():
            srv.stop()
