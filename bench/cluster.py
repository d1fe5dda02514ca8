"""``make bench BENCH_ARGS=--cluster``: enrollments per second through HAProxy
on PostgreSQL with 1, 2 and 3 nodes, both HAProxy modes of deploy/haproxy/
(TLS passthrough with the PROXY header; TLS terminated at HAProxy), new
connection per enrollment and keep-alive, beside a single SQLite node reached
directly, in the same run.  Every node is ``estkit serve --workers 1`` (one
process: nodes, not workers, are what is counted); the server CPU per
enrollment is the nodes' CPU over the measured window (HAProxy's and
PostgreSQL's reported apart).  Writes bench-results/cluster-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fixture
import procstat
from ceiling import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ESTKIT = str(Path(sys.executable).parent / "estkit")
NODES = 3


def _pg_bin(name: str) -> str:
    from estkit.cli.clusterdemo import find_program
    found = find_program(name)
    if found is None:
        raise SystemExit(f"{name} not found (PostgreSQL)")
    return found


class Postgres:
    """A throwaway PostgreSQL on a Unix socket (fsync on: a real database's durability)."""

    def __init__(self, base: Path) -> None:
        self.base = base / "pg"
        self.base.mkdir()
        self.sock = self.base / "sock"
        self.sock.mkdir()
        self.as_pg: list[str] = []
        if os.geteuid() == 0:
            for p in (self.base, self.sock):
                shutil.chown(p, "postgres")
            os.chmod(base, 0o755)
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        port = free_port()
        subprocess.run([*self.as_pg, _pg_bin("initdb"), "-D", str(self.base / "data"), "-A", "trust", "-U",
                        "postgres", "--no-sync"], check=True, capture_output=True)
        subprocess.run([*self.as_pg, _pg_bin("pg_ctl"), "-D", str(self.base / "data"), "-l", str(self.base / "log"),
                        "-w", "-o", f"-p {port} -k {self.sock} -c listen_addresses='' -c max_connections=200",
                        "start"], check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@/postgres?host={self.sock}&port={port}"

    def cpu(self) -> float:
        """CPU seconds of the postmaster and every backend, those that exited
        included (a reaped child's time is added to its parent's cutime/cstime)."""
        pid_file = self.base / "data" / "postmaster.pid"
        if not pid_file.exists():
            return 0.0
        root = int(pid_file.read_text().split()[0])
        fields = Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1].split()
        reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime
        return reaped + sum(procstat.cpu_seconds(p) for p in procstat.tree(root))

    def stop(self) -> None:
        subprocess.run([*self.as_pg, _pg_bin("pg_ctl"), "-D", str(self.base / "data"), "-m", "fast", "-w", "stop"],
                       capture_output=True)


class Node:
    """``estkit serve --workers 1`` on its own TLS port (and proxy listener)."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc = subprocess.Popen([ESTKIT, "serve", "--dir", str(directory), "--listen", f"127.0.0.1:{self.port}",
                                      "--workers", "1"], stdout=open(directory / "serve.log", "ab"),
                                     stderr=subprocess.STDOUT, env={**os.environ, **env})
        _wait(self.port, self.proc, log=directory / "serve.log")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 30, log: Path | None = None) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log is not None and log.exists() else ""
            raise SystemExit(f"a process exited {proc.returncode} before listening on {port}\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listened on {port}")


def _haproxy(mode: str, nodes: list[str], env: dict[str, str], work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full = {**os.environ, **env, "ESTKIT_FRONT": f"127.0.0.1:{port}",
            **{f"ESTKIT_NODE{i}": a for i, a in enumerate(nodes, 1)}}
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy" / f"{mode}.cfg")],
                            stdout=open(work / f"haproxy-{mode}.log", "ab"), stderr=subprocess.STDOUT, env=full)
    _wait(port, proc)
    time.sleep(1.5)  # the first health checks (every second, one success) mark the nodes up
    return proc, port


def _loadgen(port: int, trust: str, mode: str, csrs: Path, a: argparse.Namespace,
             pids: dict[str, list[int]], pg: Postgres | None = None) -> dict[str, Any]:
    """loadgen.py; the CPU of each group of processes sampled when the window opens and closes."""
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--host", "localhost", "--port", str(port), "--path",
           "/.well-known/est/simpleenroll", "--method", "POST", "--mode", mode, "-c", str(a.cluster_concurrency),
           "-d", str(a.duration), "--warmup", str(a.warmup), "--cafile", trust, "--bodies", str(csrs),
           "--user", f"{fixture.BENCH_USER}:{fixture.BENCH_PASSWORD}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None

    def cpu() -> dict[str, float]:
        got = {k: sum(procstat.cpu_seconds(p) for p in v) for k, v in pids.items()}
        if pg is not None:
            got["postgres"] = pg.cpu()
        return got

    before = after = cpu()
    result: dict[str, Any] = {}
    for line in proc.stdout:
        line = line.strip()
        if line == "window-start":
            before = cpu()
        elif line == "window-end":
            after = cpu()
        elif line.startswith("{"):
            result = json.loads(line)
    if proc.wait() != 0 or not result:
        raise SystemExit(f"loadgen failed: {proc.stderr.read()[-800:] if proc.stderr else ''}")
    ok = result["ok"] or 0
    for k in after:
        used = after[k] - before[k]
        result[f"{k}_cpu_s"] = round(used, 3)
        result[f"{k}_cpu_ms_per_enrollment"] = round(used / ok * 1000, 3) if ok else None
    return result


def _row(label: str, nodes: int, proxy: str, mode: str, r: dict[str, Any]) -> dict[str, Any]:
    keep = ("rate_per_s", "p50_ms", "p99_ms", "ok", "statuses", "errors", "nodes_cpu_s",
            "nodes_cpu_ms_per_enrollment", "haproxy_cpu_ms_per_enrollment", "postgres_cpu_ms_per_enrollment")
    return {"store": label, "nodes": nodes, "proxy": proxy, "mode": mode, **{k: r.get(k) for k in keep}}


def run_cluster(a: argparse.Namespace) -> Path:
    """The whole cluster benchmark; returns the JSON file."""
    base = Path(tempfile.mkdtemp(prefix="estkit-bench-cluster-"))
    rows: list[dict[str, Any]] = []
    procs: list[Any] = []
    pg = Postgres(base)
    try:
        csrs = fixture.write_csrs(base / "csrs.txt", a.csrs or 200)
        # SQLite, one node, reached directly: the baseline of the same run.
        sq = fixture.make_dir(base / "sqlite", "p256", workers=1)
        node = Node(sq, {})
        procs.append(node)
        for mode in ("new", "keepalive"):
            r = _loadgen(node.port, str(sq / "ca.pem"), mode, csrs, a, {"nodes": procstat.tree(node.proc.pid)})
            rows.append(_row("sqlite", 1, "none", mode, r))
            print(json.dumps(rows[-1]), flush=True)
        node.stop()
        procs.remove(node)
        # PostgreSQL: one directory, copied per node (as separate machines would have it).
        first = base / "node1"
        subprocess.run([ESTKIT, "init", "--dir", str(first)], check=True, capture_output=True,
                       env={**os.environ, "ESTKIT_STORE_URL": pg.url})
        text = (first / "config.toml").read_text()
        text = text.replace("[server]\n", '[server]\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1"]\n'
                            'access_log = false\n', 1).replace("access_log = true\n", "")
        text = "\n".join(f'url = "{pg.url}"' if ln.startswith("url = ") else ln for ln in text.splitlines()) + "\n"
        (first / "config.toml").write_text(text)
        subprocess.run([ESTKIT, "user", "add", fixture.BENCH_USER, "--dir", str(first), "--password-stdin"],
                       input=(fixture.BENCH_PASSWORD + "\n").encode(), check=True, capture_output=True)
        nodes: list[Node] = []
        for i in range(1, NODES + 1):
            d = first if i == 1 else base / f"node{i}"
            if i > 1:
                shutil.copytree(first, d, symlinks=True)
            pport = free_port()
            cfg = d / "config.toml"
            lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("proxy_listen")]
            cfg.write_text("\n".join(lines).replace("[server]\n", f'[server]\nproxy_listen = "127.0.0.1:{pport}"\n', 1)
                           + "\n")
            nodes.append(Node(d, {}))
            nodes[-1].proxy_port = pport  # type: ignore[attr-defined]
            procs.append(nodes[-1])
        front = base / "front.pem"
        front.write_bytes((first / "tls/server.pem").read_bytes() + (first / "tls/server.key").read_bytes())
        trust = str(first / "ca.pem")
        for n in range(1, NODES + 1):
            active = nodes[:n]
            for proxy in ("passthrough", "terminate"):
                addrs = ([f"127.0.0.1:{x.port}" for x in active] if proxy == "passthrough"
                         else [f"127.0.0.1:{x.proxy_port}" for x in active])  # type: ignore[attr-defined]
                hp, port = _haproxy(proxy, addrs, {"ESTKIT_NODE_CA": trust, "ESTKIT_PROXY_PEM": str(front),
                                                   "ESTKIT_CLIENT_CA": trust}, base)
                try:
                    for mode in ("new", "keepalive"):
                        pids = {"nodes": [p for x in active for p in procstat.tree(x.proc.pid)], "haproxy": [hp.pid]}
                        r = _loadgen(port, trust, mode, csrs, a, pids, pg)
                        rows.append(_row("postgresql", n, proxy, mode, r))
                        print(json.dumps(rows[-1]), flush=True)
                finally:
                    hp.terminate()
                    hp.wait(10)
    finally:
        for p in procs:
            p.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    path = out / time.strftime("cluster-%Y%m%dT%H%M%S.json")
    doc = {"machine": {"nproc": os.cpu_count()}, "concurrency": a.cluster_concurrency, "duration_s": a.duration,
           "rows": rows}
    path.write_text(json.dumps(doc, indent=1))
    (out / "cluster-latest.json").write_text(json.dumps(doc, indent=1))
    print(_table(rows))
    return path


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| store | nodes | HAProxy | connection | enrollments/s | p50 ms | p99 ms | node CPU ms/enr | HAProxy ms/enr | PostgreSQL ms/enr | errors |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        errs = sum((r["errors"] or {}).values()) + sum(v for k, v in (r["statuses"] or {}).items() if k != "200")
        lines.append(f"| {r['store']} | {r['nodes']} | {r['proxy']} | {r['mode']} | {r['rate_per_s']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['nodes_cpu_ms_per_enrollment']} | "
                     f"{r.get('haproxy_cpu_ms_per_enrollment') or '-'} | {r.get('postgres_cpu_ms_per_enrollment') or '-'}"
                     f" | {errs} |")
    return "\n".join(lines)
