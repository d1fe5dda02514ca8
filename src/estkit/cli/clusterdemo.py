"""``estkit cluster-demo``: a throwaway local cluster to try scale-out with.

A PostgreSQL in a temporary directory (initdb, pg_ctl: its own socket
directory, no TCP), N ``estkit serve`` nodes on loopback sharing it, and
HAProxy in front on one of the deploy/haproxy configurations.  It prints how
to enroll through it and runs until Ctrl-C (or SIGTERM), then stops
everything and removes the directory.  Nothing of it is meant to be kept.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

__all__ = ["cluster_demo", "register", "find_program"]

DEMO_USER = "demo"


class DemoError(click.ClickException):
    """A step of the demo failed; the message says which."""


def find_program(name: str) -> str | None:
    """A program on PATH, or PostgreSQL's (Debian keeps initdb and pg_ctl in
    /usr/lib/postgresql/VERSION/bin, off PATH: the newest version wins)."""
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return None


def _which(name: str) -> str:
    found = find_program(name)
    if found is None:
        raise DemoError(f"{name} not found: install it (Debian: apt-get install postgresql haproxy)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], what: str, *, input: str | None = None, env: dict[str, str] | None = None) -> None:
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env, timeout=120)
    if p.returncode != 0:
        raise DemoError(f"{what} failed: {(p.stderr or p.stdout).strip()[-500:]}")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{what} exited {proc.returncode}: see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise DemoError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s: see {log}")


class _Demo:
    def __init__(self, base: Path, nodes: int, port: int, config: Path) -> None:
        self.base, self.n, self.port, self.config = base, nodes, port, config
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pg_data = base / "pg"
        self.as_pg: list[str] = []
        self.pg_ctl = _which("pg_ctl")

    def postgres(self) -> str:
        """initdb and start; the store URL (Unix socket, trust auth: the directory is private)."""
        sock = self.base / "pgsock"
        sock.mkdir()
        if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
            for p in (self.base, sock):
                os.chmod(p, 0o755 if p == self.base else 0o700)
                shutil.chown(p, "postgres")
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        port = _free_port()
        _run([*self.as_pg, _which("initdb"), "-D", str(self.pg_data), "-A", "trust", "-U", "postgres", "--no-sync"],
             "initdb")
        _run([*self.as_pg, self.pg_ctl, "-D", str(self.pg_data), "-l", str(self.base / "pg.log"), "-w", "-o",
              f"-p {port} -k {sock} -c listen_addresses=''", "start"], "starting PostgreSQL")
        return f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"

    def nodes(self, store_url: str, password: str) -> list[tuple[Path, int]]:
        beside = Path(sys.executable).parent / "estkit"  # the same installation as this command
        estkit = [str(beside) if beside.exists() else "estkit"]
        first = self.base / "node1"
        env = {**os.environ, "ESTKIT_STORE_URL": store_url}
        _run([*estkit, "init", "--dir", str(first)], "estkit init", env=env)
        cfg = first / "config.toml"
        # Behind the passthrough configuration: the PROXY header from HAProxy (on
        # loopback), and a drain longer than its 1 s health check takes to notice.
        text = cfg.read_text().replace("[server]\n", '[server]\nproxy_protocol = true\ntrusted_proxies = '
                                       '["127.0.0.1"]\ndrain_seconds = 2\n', 1)
        lines = [f'url = "{store_url}"' if line.startswith("url = ") else line for line in text.splitlines()]
        cfg.write_text("\n".join(lines) + "\n")
        _run([*estkit, "user", "add", DEMO_USER, "--dir", str(first), "--password-stdin"], "estkit user add",
             input=password + "\n", env=env)
        out = []
        for i in range(1, self.n + 1):
            d = first if i == 1 else self.base / f"node{i}"
            if i > 1:
                shutil.copytree(first, d, symlinks=True)
            port = _free_port()
            log = d / "serve.log"
            proc = subprocess.Popen([*estkit, "serve", "--dir", str(d), "--listen", f"127.0.0.1:{port}",
                                     "--workers", "1"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            self.procs.append(proc)
            _wait_port(port, proc, f"node {i}", log)
            out.append((d, port))
        return out

    def haproxy(self, nodes: list[tuple[Path, int]]) -> None:
        env = {**os.environ, "ESTKIT_FRONT": f"127.0.0.1:{self.port}",
               "ESTKIT_NODE_CA": str(nodes[0][0] / "ca.pem"),
               **{f"ESTKIT_NODE{i}": f"127.0.0.1:{p}" for i, (_d, p) in enumerate(nodes, 1)}}
        haproxy = _which("haproxy")
        _run([haproxy, "-c", "-q", "-f", str(self.config)], f"checking {self.config}", env=env)
        log = self.base / "haproxy.log"
        proc = subprocess.Popen([haproxy, "-db", "-f", str(self.config)], stdout=open(log, "ab"),
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        _wait_port(self.port, proc, "HAProxy", log)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if (self.pg_data / "postmaster.pid").exists():
            subprocess.run([*self.as_pg, self.pg_ctl, "-D", str(self.pg_data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)


@click.command("cluster-demo")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 4), help="How many estkit nodes.")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(1, 65535),
              help="HAProxy's port on 127.0.0.1.")
@click.option("--haproxy-config", default="deploy/haproxy/passthrough.cfg", show_default=True,
              type=click.Path(dir_okay=False), help="The HAProxy configuration (TLS passthrough, PROXY protocol v2).")
def cluster_demo(nodes: int, port: int, haproxy_config: str) -> None:
    """Start a throwaway cluster on loopback: PostgreSQL, N nodes, HAProxy.
    Runs until Ctrl-C, then removes everything."""
    config = Path(haproxy_config).resolve()
    if not config.exists():
        raise DemoError(f"{haproxy_config} not found: run from the estkit source tree or give --haproxy-config")
    base = Path(tempfile.mkdtemp(prefix="estkit-cluster-"))
    demo = _Demo(base, nodes, port, config)
    stop = {"now": False}

    def _stop(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        password = secrets.token_urlsafe(12)
        click.echo(f"starting PostgreSQL, {nodes} node(s) and HAProxy in {base} ...", err=True)
        up = demo.nodes(demo.postgres(), password)
        demo.haproxy(up)
        ca = up[0][0] / "ca.pem"
        url = f"https://localhost:{port}"
        click.echo(f"""
estkit cluster: {nodes} node(s) on PostgreSQL behind HAProxy at {url}
  nodes: {', '.join(f'127.0.0.1:{p} (pid {pr.pid})' for (_d, p), pr in zip(up, demo.procs))}
  CA certificate: {ca}

Enroll through it:
  curl --cacert {ca} {url}/.well-known/est/cacerts | base64 -d | openssl pkcs7 -inform DER -print_certs
  ESTCLIENT_PASSWORD='{password}' estclient enroll --server {url} --trust {ca} --user {DEMO_USER} \\
      --cn device1 --key-out device1.key --cert-out device1.pem

Stop a node (kill -TERM PID: it drains, HAProxy moves on) or kill -9 one and keep enrolling.
Ctrl-C stops everything and removes {base}.
""", nl=True)
        sys.stdout.flush()
        while not stop["now"] and all(p.poll() is None for p in demo.procs):
            time.sleep(0.2)
        if not stop["now"]:
            click.echo("a process of the cluster exited; stopping the rest", err=True)
    finally:
        demo.stop()
        shutil.rmtree(base, ignore_errors=True)


def register(cli: click.Group) -> None:
    """Add this command to the ``estkit`` group."""
    cli.add_command(cluster_demo)
