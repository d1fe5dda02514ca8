"""``--attack``: a legitimate client's enrollments while others guess passwords.

One estkit directory (P-256), the bench user (the legitimate client, HTTP
Basic from 127.0.0.1) and a ``demo`` user whose password 16 guessers try
from another address (127.0.0.2), each on a new TLS connection per guess, in
a closed loop (as fast as they are answered) unless ``--attack-rate`` paces
them.  For each server configuration (the default one, which throttles
failed authentication, and one with the throttle turned off, which only
bounds the verifications at once) it measures the legitimate client alone,
then again while the guessers run, and reports the legitimate client's
median and p99, the guessers' answers by status, and each server process's
peak RSS (scrypt at N=2^14, p=5 takes 16 MiB per verification; N=2^17 took 128 MiB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fixture
import procstat
from runs import HERE, Server, Target, run_loadgen, warm_logins

__all__ = ["run_attack"]

ATTACK_USER, ATTACK_SOURCE = "demo", "127.0.0.2"
CONFIGS = {
    "throttled": {},  # the defaults
    "no-throttle": {"auth_address_failures_per_minute": 0, "auth_user_failures_per_minute": 0},
}


def _configure(directory: Path, values: dict[str, int]) -> None:
    cfg = directory / "config.toml"
    text = cfg.read_text()
    extra = "".join(f"{k} = {v}\n" for k, v in values.items())
    cfg.write_text(text.replace("[server]\n", "[server]\n" + extra, 1))


def _guessers(t: Target, a: argparse.Namespace, csrs: Path, seconds: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--host", t.host, "--port", str(t.port), "--path",
           t.base + "/simpleenroll", "--method", "POST", "--mode", "new", "-c", str(a.attack_clients),
           "-d", str(seconds), "--warmup", "0", "--bodies", str(csrs), "--cafile", t.trust,
           "--user", f"{ATTACK_USER}:not-the-password", "--source", ATTACK_SOURCE, "--timeout", "30"]
    if a.attack_rate:
        cmd += ["--rate", str(a.attack_rate)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _legit(t: Target, a: argparse.Namespace, csrs: Path) -> dict[str, Any]:
    r = run_loadgen(t, mode="new", method="POST", path=t.base + "/simpleenroll", bodies=csrs,
                    concurrency=a.attack_legit_clients, duration=a.duration * a.repeat, warmup=a.warmup)
    r.pop("_cpu")
    return {k: r[k] for k in ("rate_per_s", "p50_ms", "p90_ms", "p99_ms", "requests", "ok", "statuses", "errors")}


def run_attack(a: argparse.Namespace, result: dict[str, Any], csrs: Path, work: Path) -> None:
    """The attack scenario for every configuration in CONFIGS; appends to ``result["attack"]``."""
    result["target"] = f"estkit serve --workers {a.workers} (attack)"
    result["attack"] = []
    for name in a.attack_configs.split(","):
        values = CONFIGS[name]
        d = fixture.make_dir(work / f"attack-{name}", "p256", workers=a.workers)
        subprocess.run([fixture.ESTKIT, "user", "add", ATTACK_USER, "--dir", str(d), "--generate"], check=True,
                       capture_output=True)
        _configure(d, values)
        srv = Server(d, a.workers)
        try:
            t = Target("127.0.0.1", srv.port, "/.well-known/est", str(d / "ca.pem"),
                       user=f"{fixture.BENCH_USER}:{fixture.BENCH_PASSWORD}", server_pid=srv.proc.pid)
            warm_logins(t, csrs, a.workers)
            alone = _legit(t, a, csrs)
            rss_alone = srv.rss()
            # The guessers start first and outlast the measurement.
            seconds = a.warmup + a.duration * a.repeat + 4.0
            guess = _guessers(t, a, csrs, seconds)
            time.sleep(1.5)
            attacked = _legit(t, a, csrs)
            out, err = guess.communicate(timeout=seconds + 60)
            g = next((json.loads(line) for line in out.splitlines() if line.startswith("{")), None)
            if g is None:
                raise RuntimeError(f"guessers failed: {err[-800:]}")
            entry = {"config": name, "server_settings": values, "legit_alone": alone, "legit_attacked": attacked,
                     "guessers": {"clients": a.attack_clients, "rate_limit": a.attack_rate or None,
                                  "answers_per_s": g["requests"] / g["duration_s"], "statuses": g["statuses"],
                                  "errors": g["errors"], "p50_ms": g["p50_ms"]},
                     "median_ratio": (attacked["p50_ms"] / alone["p50_ms"]) if alone["p50_ms"] else None,
                     "rss_mb_before_attack": rss_alone, "rss_mb_peak": srv.rss(),
                     "rss_mb_now": {str(p): procstat.rss_mb(p) for p in srv.pids()}}
            result["attack"].append(entry)
            _print(entry)
        finally:
            srv.stop()


def _print(e: dict[str, Any]) -> None:
    alone, hit = e["legit_alone"], e["legit_attacked"]
    g = e["guessers"]
    ratio = e["median_ratio"]
    print(f"  attack    {e['config']:11s} legit p50 {alone['p50_ms']:6.1f} ms alone, {hit['p50_ms']:6.1f} ms attacked "
          f"(x{ratio:.2f}), p99 {alone['p99_ms']:.1f} -> {hit['p99_ms']:.1f} ms, legit statuses {hit['statuses']}; "
          f"guessers {g['answers_per_s']:.0f} answers/s {g['statuses']}; peak RSS MB "
          f"{ {k: round(v) for k, v in e['rss_mb_peak'].items()} }", flush=True)
