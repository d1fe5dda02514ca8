#!/usr/bin/env python3
"""estkit benchmark: EST enrollments per second against the ceiling measured
in the same run on the same machine.

By default it creates throwaway estkit directories (a P-256 and an RSA-2048
CA), pre-fills their stores (0 and 100,000 certificates), starts a real
``estkit serve --workers N`` per combination (the store sizes of one key side
by side, measured in turns) and drives them from separate load-generator
processes on 127.0.0.1:

- ``new``: simpleenroll on a new TCP connection with a full TLS handshake per
  enrollment (loadgen.py; sessions resumed are counted and must be 0);
- ``keepalive``: simpleenroll over kept-alive connections (wrk with a Lua
  script, or loadgen.py with ``--keepalive-gen loadgen``);
- ``cacerts``: GET /cacerts over kept-alive connections.

The ceiling: ``openssl s_server -www`` full handshakes per second under the
same generator and concurrency, and one core's CSR verifications and
certificate signatures per second with the same keys.  Server CPU seconds
and peak RSS come from /proc for every server process.  Writes
``bench-results/bench-<time>.json`` and ``.png`` (and ``latest.*``).

``--url``, ``--trust`` and ``--user`` (or ``--cert``/``--key``) aim the same
tool at any EST server; ``--server-pid`` adds its CPU and memory.
``--attack`` measures a legitimate client while others guess passwords
(bench/attack.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ceiling  # noqa: E402
import fixture  # noqa: E402
import procstat  # noqa: E402
import wrkgen  # noqa: E402
from plot import plot  # noqa: E402
from runs import Server, Target, measure, medians, profile_run, repeated, run_loadgen, warm_logins  # noqa: E402
from targets import evaluate  # noqa: E402


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["mem_total_mb"] = int(mem[1]) // 1024
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    try:
        info["openssl"] = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["openssl"] = None
    import cryptography
    info["cryptography"] = cryptography.__version__
    return info


# -- the whole run ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="P-256, empty store, 8 clients, 1 s runs, no repeat (~30 s); "
                   "options given explicitly still apply")
    p.add_argument("--keys", help="CA key types: p256, rsa2048 (key files), softhsm-p256, softhsm-rsa2048 (the key "
                                  "in a SoftHSM2 token); default p256,rsa2048,softhsm-p256")
    p.add_argument("--stores", help="certificates pre-filled in the store (default 0,100000)")
    p.add_argument("--concurrency", help="concurrent clients (default 1,8,32)")
    p.add_argument("--modes", default="new,keepalive,cacerts")
    p.add_argument("--cacerts-concurrency", default="8")
    p.add_argument("--duration", type=float, help="seconds measured per run (default 4)")
    p.add_argument("--warmup", type=float, help="seconds before each measured window (default 1)")
    p.add_argument("--repeat", type=int, help="runs per figure, medians reported (default 3)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="estkit serve --workers")
    p.add_argument("--csrs", type=int, help="distinct CSRs rotated (default 200)")
    p.add_argument("--keepalive-gen", default="wrk" if wrkgen.have_wrk() else "loadgen", choices=["wrk", "loadgen"])
    p.add_argument("--no-ceiling", action="store_true", help="skip openssl s_server and the crypto micro-benchmarks")
    p.add_argument("--profile", action="store_true", help="py-spy profile of new and keepalive at 8 clients")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--url", default="", help="an EST server to measure instead (https://host:port[/.well-known/est[/label]])")
    p.add_argument("--trust", default="", help="with --url: CA file to verify the server (else not verified)")
    p.add_argument("--user", default="", help="with --url: USER:PASSWORD for HTTP Basic")
    p.add_argument("--cert", default="", help="with --url: client certificate (PEM)")
    p.add_argument("--key", default="", help="with --url: its key")
    p.add_argument("--server-pid", type=int, default=None, help="with --url: measure this process tree's CPU and RSS")
    p.add_argument("--ceiling-cert", default="", help="with --url: TLS cert/key for the s_server ceiling")
    p.add_argument("--ceiling-key", default="")
    p.add_argument("--attack", action="store_true", help="only the attack scenario: a legitimate client's "
                   "enrollments alone and while others guess passwords (bench/attack.py)")
    p.add_argument("--attack-clients", type=int, default=16, help="with --attack: password guessers")
    p.add_argument("--attack-rate", type=float, default=0.0, help="with --attack: guesses per second in all "
                   "(0: each guesser as fast as it is answered)")
    p.add_argument("--attack-legit-clients", type=int, default=1, help="with --attack: legitimate clients")
    p.add_argument("--attack-configs", default="throttled,no-throttle",
                   help="with --attack: server configurations (throttled: the defaults; no-throttle)")
    p.add_argument("--cluster", action="store_true", help="only the cluster: 1, 2 and 3 nodes behind HAProxy on "
                   "PostgreSQL, both deploy/haproxy modes, new connection and keep-alive, beside one SQLite node "
                   "(bench/cluster.py)")
    p.add_argument("--designs", default="", help="only the front-end comparison of issue 17: a comma list of "
                   "serve (this estkit serve), serve@DIR (estkit serve from the checkout DIR, e.g. an older "
                   "commit's worktree), lean, lean-inline, threads (prototypes, bench/frontends.py); P-256, "
                   "empty store, in turns (bench/designs.py)")
    p.add_argument("--cluster-concurrency", type=int, default=8, help="with --cluster: concurrent clients")
    a = p.parse_args(argv)
    defaults = QUICK if a.quick else FULL
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


# What a plain `make bench` measures (about 10 minutes on 2 cores), and --quick.
FULL: dict[str, Any] = {"keys": "p256,rsa2048,softhsm-p256", "stores": "0,100000", "concurrency": "1,8,32", "duration": 4.0,
                        "warmup": 1.0, "repeat": 3, "csrs": 200}
QUICK: dict[str, Any] = {"keys": "p256", "stores": "0", "concurrency": "8", "duration": 1.0, "warmup": 0.5,
                         "repeat": 1, "csrs": 20}


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _concurrencies(a: argparse.Namespace, mode: str) -> list[int]:
    return _ints(a.cacerts_concurrency) if mode == "cacerts" else _ints(a.concurrency)


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _print_run(r: dict[str, Any]) -> None:
    cpu = r.get("server_cpu_ms_per_request")
    reused = r.get("sessions_reused")
    print(f"  {r['mode']:9s} {r['key']:8s} store={r['store_rows']:<7} c={r['concurrency']:<3} "
          f"{r['rate_per_s']:8.1f}/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
          f"cpu {cpu if cpu is None else round(cpu, 2)} ms/req  cs {_n(r.get('server_switches_per_request'))}/req  "
          f"reused {reused}  "
          f"{'errors ' + str(r['errors']) if r['errors'] else ''}", flush=True)


def _print_profile(p: dict[str, Any]) -> None:
    split = ", ".join(f"{k} {v:.2f}" for k, v in p["cpu_ms_per_request"].items())
    print(f"  profile   {p['mode']} {p['key']} store={p['store_rows']}: CPU ms per request {split}; "
          f"GIL held by (self):", flush=True)
    for name, share in p["self"][:8]:
        print(f"            {share:5.1f}%  {name}", flush=True)


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Everything the arguments ask for; returns the result document."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="estkit-bench-"))
    modes = [m for m in a.modes.split(",") if m]
    result: dict[str, Any] = {"tool": "estkit bench/bench.py", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "machine": machine(), "settings": {k: v for k, v in vars(a).items()},
                              "runs": [], "ceiling": [], "micro": {}, "rss_mb": [], "profiles": [], "prefill": []}
    csrs = fixture.write_csrs(work / "csrs.txt", a.csrs)
    print(f"estkit bench: work dir {work}, {a.csrs} CSRs, keep-alive generator {a.keepalive_gen}", flush=True)
    try:
        if a.attack:
            from attack import run_attack
            run_attack(a, result, csrs, work)
        elif a.designs:
            from designs import run_designs
            run_designs(a, result, csrs, work)
        elif a.url:
            _run_external(a, result, modes, csrs, work, out)
        else:
            _run_estkit(a, result, modes, csrs, work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["targets"] = evaluate(result)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (out / name).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if plot(result, out / f"bench-{stamp}.png"):
        shutil.copyfile(out / f"bench-{stamp}.png", out / "latest.png")
    print(f"wrote {out}/bench-{stamp}.json and .png")
    for tgt in result["targets"]:
        print(f"  [{'met ' if tgt['met'] else 'MISS' if tgt['met'] is False else ' -- '}] {tgt['name']}: {tgt['value']}")
    return result


def _s_server_run(t: Target, c: int, a: argparse.Namespace) -> dict[str, Any]:
    """One run of full handshakes against ``openssl s_server -www``."""
    return run_loadgen(t, mode="new", method="GET", path="/", bodies=None, concurrency=c, duration=a.duration,
                       warmup=a.warmup)


def _ceiling(a: argparse.Namespace, result: dict[str, Any], cert: Path, key: Path, csrs: Path, label: str) -> None:
    if a.no_ceiling or "new" not in a.modes.split(","):
        return
    with ceiling.s_server(cert, key) as (port, proc):
        t = Target("127.0.0.1", port, "", "", server_pid=proc.pid)
        for c in _ints(a.concurrency):
            r = repeated(lambda: _s_server_run(t, c, a), a.repeat)
            cpu_before, cpu_after = r.pop("_cpu")
            r["server_cpu_s"] = cpu_after.total() - cpu_before.total()
            r.update(key=label, concurrency=c, server="openssl s_server -www")
            result["ceiling"].append(r)
            print(f"  ceiling   s_server c={c:<3} {r['rate_per_s']:8.1f}/s  p99 {r['p99_ms']:6.1f} ms  "
                  f"reused {r['sessions_reused']}", flush=True)


def _run_estkit(a: argparse.Namespace, result: dict[str, Any], modes: list[str], csrs: Path, work: Path,
                out: Path) -> None:
    result["target"] = f"estkit serve --workers {a.workers}"
    ceiling_done = False
    stores = _ints(a.stores)
    for key in a.keys.split(","):
        dirs: dict[int, Path] = {}
        for rows in stores:
            d = dirs[rows] = fixture.make_dir(work / f"{key}-{rows}", key, workers=a.workers)
            if not a.no_ceiling and key not in result["micro"]:
                result["micro"][key] = ceiling.crypto_micro(d, csrs)
                print(ceiling.describe_micro(key, result["micro"][key]), flush=True)
            if not ceiling_done:  # the TLS key is P-256 whatever the CA key: one s_server ceiling per run
                _ceiling(a, result, d / "tls/server.pem", d / "tls/server.key", csrs, "tls-p256")
                ceiling_done = True
            if rows:
                secs = fixture.prefill(d, rows)
                result["prefill"].append({"key": key, "rows": rows, "seconds": secs})
                print(f"  prefill   {key:8s} {rows} certificates in {secs:.1f} s", flush=True)
        servers: dict[int, Server] = {}
        paired = contextlib.ExitStack()
        try:
            ceiling_t: Target | None = None
            if not a.no_ceiling and "new" in modes:  # measured in turns with the new-connection runs
                port, proc = paired.enter_context(ceiling.s_server(dirs[stores[0]] / "tls/server.pem",
                                                                   dirs[stores[0]] / "tls/server.key"))
                ceiling_t = Target("127.0.0.1", port, "", "", server_pid=proc.pid)
            for rows in stores:
                servers[rows] = Server(dirs[rows], a.workers)
            targets = {rows: Target("127.0.0.1", srv.port, "/.well-known/est", str(dirs[rows] / "ca.pem"),
                                    user=f"{fixture.BENCH_USER}:{fixture.BENCH_PASSWORD}", server_pid=srv.proc.pid)
                       for rows, srv in servers.items()}
            for t in targets.values():
                warm_logins(t, csrs, a.workers)
            for mode in modes:
                for c in _concurrencies(a, mode):
                    # The store sizes take turns run by run, so that a drift of the
                    # machine's speed (this VM's drifts by a third within an hour)
                    # falls on every size alike: the 0 -> 100,000 target compares them.
                    # For new connections s_server takes its turn too: the ratio
                    # of each figure is to the ceiling of the same minutes.
                    runs: dict[int, list[dict[str, Any]]] = {rows: [] for rows in stores}
                    ceilings: list[float] = []
                    for i in range(a.repeat):
                        if mode == "new" and ceiling_t is not None:
                            ceilings.append(_s_server_run(ceiling_t, c, a)["rate_per_s"])
                        # every other turn in reverse: the run right after another tends to be slower
                        for rows in (stores if i % 2 == 0 else stores[::-1]):
                            runs[rows].append(measure(targets[rows], mode, c, a, csrs, work))
                    for rows in stores:
                        r = medians(runs[rows])
                        r.update(key=key, store_rows=rows, concurrency=c)
                        if ceilings:
                            r["ceiling_rate_per_s"] = statistics.median(ceilings)
                            r["ceiling_repeats"] = ceilings
                        result["runs"].append(r)
                        _print_run(r)
            for rows, srv in servers.items():
                if a.profile:
                    for mode in ("new", "keepalive"):
                        if mode in modes:
                            prof = profile_run(targets[rows], srv, mode, 8, a, csrs, work, out,
                                               f"{mode}-{key}-{rows}")
                            if prof:
                                prof.update(key=key, store_rows=rows)
                                result["profiles"].append(prof)
                                _print_profile(prof)
                result["rss_mb"].append({"key": key, "store_rows": rows, "peak": srv.rss()})
        finally:
            paired.close()
            for rows, srv in servers.items():
                code = srv.stop()
                if code != 0:
                    print(f"  estkit serve exited {code}; see {dirs[rows]}/serve.log", file=sys.stderr)
        for rows in servers:
            result.setdefault("rows_after", []).append({"key": key, "store_rows": rows,
                                                        "certificates": fixture.count_rows(dirs[rows])})


def _run_external(a: argparse.Namespace, result: dict[str, Any], modes: list[str], csrs: Path, work: Path,
                  out: Path) -> None:
    u = urlsplit(a.url)
    base = u.path.rstrip("/") or "/.well-known/est"
    result["target"] = a.url
    t = Target(u.hostname or "127.0.0.1", u.port or 443, base, a.trust, user=a.user, cert=a.cert, key=a.key,
               server_pid=a.server_pid)
    if a.ceiling_cert:
        _ceiling(a, result, Path(a.ceiling_cert), Path(a.ceiling_key), csrs, "given")
    for mode in modes:
        for c in _concurrencies(a, mode):
            r = repeated(lambda: measure(t, mode, c, a, csrs, work), a.repeat)
            r.update(key="external", store_rows=-1, concurrency=c)
            result["runs"].append(r)
            _print_run(r)
    if a.server_pid:
        result["rss_mb"].append({"key": "external", "store_rows": -1,
                                 "peak": {str(p): procstat.peak_rss_mb(p) for p in procstat.tree(a.server_pid)}})


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``make bench BENCH_ARGS=...``."""
    a = parse_args(argv)
    if a.cluster:
        from cluster import run_cluster
        print(f"results: {run_cluster(a)}")
        return 0
    run(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
