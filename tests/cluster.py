"""Test support for a real cluster: PostgreSQL, N ``estkit serve`` nodes and HAProxy.

Nothing is simulated: the nodes are ``estkit serve`` processes on 127.0.0.1,
each in its own copy of one data directory (what separate machines would
have), all on one throwaway PostgreSQL (support.postgres_server); HAProxy runs
the very configuration files of ``deploy/haproxy/`` with their environment
variables.  :class:`Load` runs enrolling clients through HAProxy and counts
what they got.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import ServerProcess, basic, estkit, free_port, read_config, require_tool, write_config

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "haproxy"
USER, PASSWORD = "cluster", "cluster-password-1"


def make_cluster_dirs(base: Path, store_url: str, n: int, *,
                      configure: Callable[[dict[str, Any]], None] | None = None) -> list[Path]:
    """``estkit init`` once, point it at the store, add the test user, then one
    copy of the directory per node (the same CA key and configuration)."""
    first = base / "node1"
    estkit("init", "--dir", str(first))
    doc = read_config(first)
    doc.setdefault("store", {})["url"] = store_url
    if configure is not None:
        configure(doc)
    write_config(first, doc)
    estkit("user", "add", USER, "--dir", str(first), "--password-stdin", input=PASSWORD + "\n")
    dirs = [first]
    for i in range(2, n + 1):
        d = base / f"node{i}"
        shutil.copytree(first, d, symlinks=True)
        for log in d.glob("serve-*.log"):
            log.unlink()
        dirs.append(d)
    return dirs


@dataclass
class Haproxy:
    """HAProxy on one of the deploy/haproxy configurations."""

    config: Path
    env: dict[str, str]
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def stats_sock(self) -> Path:
        return self.workdir / "haproxy.sock"

    def start(self, timeout: float = 15.0) -> Haproxy:
        require_tool("haproxy")
        self.port = self.port or free_port()
        env = {**os.environ, **self.env, "ESTKIT_FRONT": f"127.0.0.1:{self.port}",
               "ESTKIT_HAPROXY_STATS": str(self.stats_sock)}
        # -c first: a configuration error is reported as such, not as "did not listen".
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(self.config)], env=env, capture_output=True)
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        log = open(self.workdir / "haproxy.log", "ab")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"haproxy exited:\n{self.log()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"haproxy did not listen:\n{self.log()}")

    def log(self) -> str:
        p = self.workdir / "haproxy.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def command(self, cmd: str) -> str:
        """One command on HAProxy's stats socket (its runtime API)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_sock))
            s.sendall(cmd.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def server_states(self) -> dict[str, str]:
        """Each backend server's status as HAProxy's checks see it (UP, DOWN, MAINT...)."""
        lines = self.command("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("svname") not in (None, "FRONTEND", "BACKEND"):
                out[row["svname"]] = row["status"]
        return out

    def wait_states(self, want: Callable[[dict[str, str]], bool], timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                states = self.server_states()
            except OSError:  # the stats socket is made just after the frontend listens
                time.sleep(0.1)
                continue
            if want(states):
                return states
            time.sleep(0.1)
        raise AssertionError(f"HAProxy's server states did not settle: {states}\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def node_env(nodes: list[str]) -> dict[str, str]:
    """The ESTKIT_NODE1..N variables of the deploy/haproxy configurations."""
    return {f"ESTKIT_NODE{i}": addr for i, addr in enumerate(nodes, 1)}


@dataclass
class Outcome:
    """What the clients of a :class:`Load` got."""

    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    conn_errors: Counter[str] = field(default_factory=Counter)
    serials: list[int] = field(default_factory=list)
    failed_clients: int = 0  # clients that gave up (no retries left, or no retrying at all)
    retry_after_503: int = 0  # 503s that carried Retry-After

    @property
    def errors_5xx(self) -> int:
        return sum(n for st, n in self.statuses.items() if st >= 500)

    def summary(self) -> str:
        return (f"{self.ok} enrolled; statuses {dict(sorted(self.statuses.items()))}; "
                f"connection errors {dict(self.conn_errors)}; {self.failed_clients} failed")


class Load:
    """``clients`` threads enrolling through ``port`` (one TLS connection per
    enrollment, as ``estkit client enroll`` does) until :meth:`stop`.

    With ``retry``, a client whose request failed (a connection error, a 5xx)
    sends it again after the Retry-After it was given (or 0.2 s), until it
    succeeds: the count of failures is still recorded.  Without it, each
    failure counts as a failed enrollment."""

    def __init__(self, port: int, ca_pem: Path, *, clients: int = 16, retry: bool = True,
                 ctx: ssl.SSLContext | None = None, auth: str | None = None, pace: float = 0.2) -> None:
        # ``pace``: each client's pause between enrollments, so that the load
        # leaves the 2-core machine's CPU to the processes under test.
        self.port, self.clients, self.retry, self.pace = port, clients, retry, pace
        self.ctx = ctx or ssl.create_default_context(cafile=str(ca_pem))
        self.auth = auth if auth is not None else basic(USER, PASSWORD)
        self.out = Outcome()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 60.0) -> Outcome:
        """Stop starting enrollments, wait for those in progress (retries included)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t for t in self._threads if t.is_alive()]
        assert not stuck, f"{len(stuck)} clients did not finish within {timeout}s: {self.out.summary()}"
        return self.out

    def _client(self, index: int) -> None:
        key = generate_key("ec:P-256")
        n = 0
        while not self._stop.is_set():
            n += 1
            body = base64.b64encode(build_csr(key, cn=f"c{index}-{n}-{os.getpid()}")) + b"\n"
            deadline = time.monotonic() + 60
            while True:
                # Each client from its own address (127.0.1.x), as devices are: the
                # failed-login throttle counts per address (through the PROXY header).
                done, wait = self._once(body, f"127.0.1.{index + 1}")
                if done:
                    break
                if not self.retry or time.monotonic() > deadline:
                    with self._lock:
                        self.out.failed_clients += 1
                    break
                time.sleep(wait)
            self._stop.wait(self.pace)

    def _once(self, body: bytes, source: str) -> tuple[bool, float]:
        """One enrollment attempt: (succeeded, seconds to wait before a retry)."""
        conn = http.client.HTTPSConnection("localhost", self.port, context=self.ctx, timeout=30,
                                           source_address=(source, 0))
        try:
            conn.request("POST", "/.well-known/est/simpleenroll", body=body,
                         headers={"Content-Type": "application/pkcs10", "Authorization": self.auth})
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as exc:
            with self._lock:
                self.out.conn_errors[type(exc).__name__] += 1
            return False, 0.2
        finally:
            conn.close()
        with self._lock:
            self.out.statuses[r.status] += 1
            if r.status == 200:
                certs = parse_certs_only(base64.b64decode(data))
                self.out.serials.append(certs[0].serial_number)
                self.out.ok += 1
                return True, 0
            if r.status == 503 and r.getheader("Retry-After"):
                self.out.retry_after_503 += 1
        if r.status >= 500 or r.status == 429:
            retry_after = r.getheader("Retry-After")
            return False, min(2.0, float(retry_after)) if retry_after and retry_after.isdigit() else 0.2
        raise AssertionError(f"enrollment refused: {r.status} {data[:200]!r}")


def start_all(nodes: list[ServerProcess]) -> None:
    """Start nodes together (each start mostly waits for its process)."""
    errors: list[BaseException] = []

    def one(n: ServerProcess) -> None:
        try:
            n.start()
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def stop_all(nodes: list[ServerProcess]) -> list[int]:
    """SIGTERM every node at once (each drains on its own), then wait for them."""
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
    return [n.stop() for n in nodes]


def node(directory: Path, port: int, *, env: dict[str, str] | None = None) -> ServerProcess:
    """A node (not started) on a fixed port, so that HAProxy finds it again after a restart."""
    return ServerProcess(directory, port=port, workers=1, env=env or {})


def stored_serials(store_url: str) -> set[int]:
    """Every serial the store recorded."""
    from sqlalchemy import create_engine, text
    eng = create_engine(store_url)
    try:
        with eng.connect() as conn:
            return {int(s, 16) for (s,) in conn.execute(text("SELECT serial FROM certificates"))}
    finally:
        eng.dispose()


def kill9(srv: ServerProcess) -> None:
    """kill -9 a node (every process of it) and reap it."""
    assert srv.proc is not None
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)


def _pg_ctl(store_url: str, *args: str) -> None:
    """pg_ctl on the PostgreSQL of support.postgres_server behind ``store_url``
    (its data directory is beside its socket directory)."""
    from support import _pg_bin, run
    sock = Path(store_url.split("host=", 1)[1].split("&", 1)[0])
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    pg_ctl = _pg_bin("pg_ctl")
    assert pg_ctl is not None
    run([*as_pg, pg_ctl, "-D", str(sock.parent / "data"), *args], timeout=60)


def stop_postgres(store_url: str) -> None:
    """Stop PostgreSQL at once (``immediate``: as if it crashed)."""
    _pg_ctl(store_url, "-m", "immediate", "-w", "stop")


def start_postgres(store_url: str) -> None:
    """Start it again with the options support.postgres_server gave it."""
    sock = Path(store_url.split("host=", 1)[1].split("&", 1)[0])
    port = store_url.rsplit("port=", 1)[1].split("&", 1)[0]
    _pg_ctl(store_url, "-l", str(sock.parent / "log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off -c max_connections=200", "start")
