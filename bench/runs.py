"""One measurement: a load generator run against a target, the server's CPU
sampled around its window, repeated and reduced to medians; the estkit
server process the default run starts, and the profiled run."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ceiling
import procstat
import wrkgen
from hotspots import summarise

__all__ = ["Target", "run_loadgen", "warm_logins", "measure", "repeated", "medians", "Server", "profile_run"]

HERE = Path(__file__).resolve().parent
ESTKIT = str(Path(sys.executable).parent / "estkit")


@dataclass
class Target:
    """Where the load goes."""

    host: str
    port: int
    base: str            # path prefix up to and including /.well-known/est[/label]
    trust: str
    user: str = ""
    cert: str = ""
    key: str = ""
    server_pid: int | None = None


# -- one measurement ---------------------------------------------------------------------------


def run_loadgen(t: Target, *, mode: str, method: str, path: str, bodies: Path | None, concurrency: int,
                duration: float, warmup: float) -> dict[str, Any]:
    """loadgen.py in its own process; the server's CPU is sampled when its window opens and closes."""
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--host", t.host, "--port", str(t.port), "--path", path,
           "--method", method, "--mode", mode, "-c", str(concurrency), "-d", str(duration), "--warmup", str(warmup)]
    cmd += ["--cafile", t.trust] if t.trust else ["--insecure"]
    if bodies is not None:
        cmd += ["--bodies", str(bodies)]
    if t.user:
        cmd += ["--user", t.user]
    if t.cert:
        cmd += ["--cert", t.cert, "--key", t.key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    before = after = procstat.sample(None)
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        line = line.strip()
        if line == "window-start":
            before = procstat.sample(t.server_pid)
        elif line == "window-end":
            after = procstat.sample(t.server_pid)
        elif line.startswith("{"):
            result = json.loads(line)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {err[-800:]}")
    result["_cpu"] = (before, after)
    return result


def measure(t: Target, mode: str, concurrency: int, a: argparse.Namespace, csrs: Path, workdir: Path) -> dict[str, Any]:
    """One run of one mode at one concurrency."""
    if mode == "new":
        r = run_loadgen(t, mode="new", method="POST", path=t.base + "/simpleenroll", bodies=csrs,
                        concurrency=concurrency, duration=a.duration, warmup=a.warmup)
    else:
        method, op, body = ("POST", "simpleenroll", csrs) if mode == "keepalive" else ("GET", "cacerts", None)
        if a.keepalive_gen == "wrk" and not t.cert:
            auth = ""
            if t.user and method == "POST":
                auth = "Basic " + base64.b64encode(t.user.encode()).decode()
            r = wrkgen.run_wrk(f"https://{t.host}:{t.port}{t.base}/{op}", method=method, auth=auth, bodies=body,
                               concurrency=concurrency, duration=a.duration, warmup=a.warmup, workdir=workdir,
                               server_pid=t.server_pid)
        else:
            r = run_loadgen(t, mode="keepalive", method=method, path=f"{t.base}/{op}", bodies=body,
                            concurrency=concurrency, duration=a.duration, warmup=a.warmup)
    before, after = r.pop("_cpu")
    cpu = after.total() - before.total() if t.server_pid else None
    r["server_cpu_s"] = cpu
    r["server_cpu_ms_per_request"] = (cpu / r["ok"] * 1000) if cpu is not None and r["ok"] else None
    switches = after.total_switches() - before.total_switches() if t.server_pid else None
    r["server_switches_per_request"] = (switches / r["ok"]) if switches is not None and r["ok"] else None
    r["mode"] = mode
    return r


def warm_logins(t: Target, csrs: Path, workers: int) -> None:
    """Enroll for a few seconds before measuring, so every worker has verified the
    password once: the first verification is a scrypt (N=2^14, p=5: 16 MiB, 0.2 s or
    more on a busy machine), then remembered for five minutes (estkit.ca.passwords)."""
    if t.user:
        run_loadgen(t, mode="new", method="POST", path=t.base + "/simpleenroll", bodies=csrs,
                    concurrency=4 * max(1, workers), duration=1.0, warmup=2.0)


_MEDIAN_FIELDS = ("rate_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "server_cpu_s",
                  "server_cpu_ms_per_request", "server_switches_per_request", "loadgen_cpu_s")


def repeated(fn: Callable[[], dict[str, Any]], repeat: int) -> dict[str, Any]:
    """Run ``repeat`` times and reduce the runs with ``medians``."""
    return medians([fn() for _ in range(repeat)])


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure the median of the runs (the counts are summed);
    ``repeats`` keeps each run's rate and p99."""
    out = dict(runs[len(runs) // 2])
    for f in _MEDIAN_FIELDS:
        vals = [r[f] for r in runs if r.get(f) is not None]
        out[f] = statistics.median(vals) if vals else None
    for f in ("requests", "ok", "connections"):
        out[f] = sum(r[f] or 0 for r in runs)
    out["sessions_reused"] = (None if any(r["sessions_reused"] is None for r in runs)
                              else sum(r["sessions_reused"] for r in runs))
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    out["statuses"], out["errors"] = statuses, errors
    out["repeats"] = [{"rate_per_s": r["rate_per_s"], "p99_ms": r["p99_ms"]} for r in runs]
    return out


# -- the estkit server ---------------------------------------------------------------------------


class Server:
    """A real ``estkit serve`` on 127.0.0.1 with a given number of workers."""

    def __init__(self, directory: Path, workers: int, design: str = "") -> None:
        """``design``: a prototype front end of bench/frontends.py instead of estkit serve."""
        self.dir = directory
        self.port = ceiling.free_port()
        self.log = open(directory / f"serve{'-' + design.replace('/', '_') if design else ''}.log", "ab")
        listen = ["--listen", f"127.0.0.1:{self.port}", "--workers", str(workers)]
        env = None
        if design.startswith("serve@"):
            # estkit serve from another checkout's src (an older commit's worktree), for before/after runs
            env = {**os.environ, "PYTHONPATH": str(Path(design[len("serve@"):]) / "src")}
            cmd = [sys.executable, "-c", "from estkit.cli.main import main; main()", "serve", "--dir", str(directory),
                   *listen]
        elif design:
            cmd = [sys.executable, str(HERE / "frontends.py"), "--dir", str(directory), "--design", design, *listen]
        else:
            cmd = [ESTKIT, "serve", "--dir", str(directory), *listen]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        ceiling.wait_port(self.port, proc=self.proc)
        deadline = time.monotonic() + 10
        while len(procstat.tree(self.proc.pid)) < (workers + 1 if workers > 1 else 1) and time.monotonic() < deadline:
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The serve process and its workers."""
        return procstat.tree(self.proc.pid)

    def rss(self) -> dict[str, float]:
        """Peak RSS (VmHWM) per process, MB, keyed ``main`` / ``worker-<pid>``."""
        return {("main" if pid == self.proc.pid else f"worker-{pid}"): procstat.peak_rss_mb(pid) for pid in self.pids()}

    def stop(self) -> int:
        """SIGTERM and wait."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self.log.close()
        return code


def profile_run(t: Target, srv: Server, mode: str, concurrency: int, a: argparse.Namespace, csrs: Path,
                workdir: Path, out: Path, tag: str) -> dict[str, Any] | None:
    """One extra (not counted) run with ``py-spy record --gil`` on every worker,
    and each worker thread's CPU seconds from /proc.

    ``--gil`` samples only the thread holding the GIL: the Python work that
    serialises a worker (threads waiting on a lock or a queue are not
    samples).  C work done without the GIL (OpenSSL, SQLite) shows in the
    thread CPU split instead: ``loop`` is a worker's event-loop thread,
    ``threads`` its executor threads."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("  (py-spy not installed: no profile; pip install py-spy)", file=sys.stderr)
        return None
    workers = [p for p in srv.pids() if p != srv.proc.pid] or [srv.proc.pid]
    secs = max(2, int(a.duration))
    files = [workdir / f"pyspy-{tag}-{pid}.txt" for pid in workers]
    spies = [subprocess.Popen([pyspy, "record", "-p", str(pid), "-d", str(secs + 1), "-r", "250", "-f", "raw",
                               "--gil", "--nonblocking", "-o", str(f)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid, f in zip(workers, files)]
    time.sleep(0.5)
    before = {pid: procstat.thread_cpu(pid) for pid in workers}
    r = measure(t, mode, concurrency, argparse.Namespace(**{**vars(a), "duration": secs, "warmup": 0.5}), csrs,
                workdir)
    after = {pid: procstat.thread_cpu(pid) for pid in workers}
    for s in spies:
        s.wait(30)
    split = {"loop": 0.0, "threads": 0.0}
    for pid in workers:
        for tid, cpu in after[pid].items():
            split["loop" if tid == pid else "threads"] += cpu - before[pid].get(tid, 0.0)
    n = r["requests"] or 1
    text = "".join(f.read_text() for f in files if f.exists())
    (out / f"profile-{tag}.txt").write_text(text)
    s = summarise(text, 15)
    return {"mode": mode, "concurrency": concurrency, "file": f"profile-{tag}.txt", "kind": "py-spy --gil",
            "cpu_ms_per_request": {k: v / n * 1000 for k, v in split.items()},
            "self": s["self"], "inclusive": s["inclusive"]}
