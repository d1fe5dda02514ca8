"""Test support: real server processes, real PostgreSQL, external tools.

Nothing here mocks a component: ``ServerProcess`` runs ``estkit serve`` as a
subprocess over TLS on 127.0.0.1, ``postgres_server`` runs a throwaway
PostgreSQL (initdb/pg_ctl as the ``postgres`` user on a private port and
socket directory).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(sys.executable).parent
ESTKIT = str(VENV_BIN / "estkit")
REQUIRE_ALL = os.environ.get("ESTKIT_REQUIRE_ALL") == "1"
# Set by conftest when the run leaves out e2e tests (`make test-fast`): starting a
# process then fails the test, so the fast tier stays fast as tests are added.
FAST_TIER = False


def no_process_in_fast_tier(what: str) -> None:
    """Fail a test that starts ``what`` in the fast tier: it belongs in the e2e tier."""
    if FAST_TIER:
        pytest.fail(f"{what} started in the fast tier (-m 'not e2e'): mark the test or its module "
                    "with pytest.mark.e2e")


def require_tool(*names: str) -> None:
    """Skip when a tool is missing on a laptop; fail in CI (ESTKIT_REQUIRE_ALL=1)."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        msg = f"required tool(s) not installed: {', '.join(missing)}"
        if REQUIRE_ALL:
            pytest.fail(msg + " (ESTKIT_REQUIRE_ALL=1)")
        pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: Sequence[str], *, input: bytes | str | None = None, check: bool = True, timeout: float = 60,
        env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command, capturing output; on failure the output is in the assertion."""
    data = input.encode() if isinstance(input, str) else input
    if Path(str(cmd[0])).parent == VENV_BIN:
        no_process_in_fast_tier(Path(str(cmd[0])).name)
    p = subprocess.run(list(cmd), input=data, capture_output=True, timeout=timeout,
                       env={**os.environ, **(env or {})}, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}\nstdout: {p.stdout.decode(errors='replace')}"
                             f"\nstderr: {p.stderr.decode(errors='replace')}")
    return p


def estkit(*args: str, input: str | None = None, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the ``estkit`` command line."""
    return run([ESTKIT, *args], input=input, check=check, env=env)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(directory: Path, doc: dict[str, Any]) -> None:
    """Write a config dict as TOML (tables of tables only, as estkit uses)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs.items():
            emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", doc)
    (directory / "config.toml").write_text("\n".join(lines) + "\n")


def read_config(directory: Path) -> dict[str, Any]:
    return tomllib.loads((directory / "config.toml").read_text())


@dataclass
class ServerProcess:
    """A real ``estkit serve`` on 127.0.0.1 over TLS, in its own data directory."""

    dir: Path
    port: int = 0
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}/.well-known/est"

    def url(self, op: str, label: str | None = None) -> str:
        return f"{self.base}/{label}/{op}" if label else f"{self.base}/{op}"

    @property
    def ca_pem(self) -> Path:
        return self.dir / "ca.pem"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start and wait until it listens.  A port picked here and taken meanwhile by
        another test worker (pytest-xdist) is picked again, up to three times."""
        no_process_in_fast_tier("estkit serve")
        picked = not self.port
        for _attempt in range(3):
            self.port = self.port or free_port()
            if self._start_once(timeout) or not picked:
                return self
            self.port = 0
        raise AssertionError(f"estkit serve found no free port:\n{self.log()}")

    def _start_once(self, timeout: float) -> bool:
        """True once listening; False when the port was taken."""
        self.log_path = self.dir / f"serve-{self.port}.log"
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([ESTKIT, "serve", "--dir", str(self.dir), "--listen", f"127.0.0.1:{self.port}",
                                      "--workers", str(self.workers)], stdout=logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "in use" in self.log():
                    return False
                raise AssertionError(f"estkit serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"estkit serve did not listen within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM; returns the exit status (0 expected)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"estkit serve did not stop on SIGTERM:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def config(self) -> dict[str, Any]:
        return read_config(self.dir)

    def set_config(self, doc: dict[str, Any]) -> None:
        write_config(self.dir, doc)

    def add_user(self, name: str, password: str) -> None:
        estkit("user", "add", name, "--dir", str(self.dir), "--password-stdin", input=password + "\n",
               env=self.env)

    def ssl_context(self, cert: Path | None = None, key: Path | None = None,
                    max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx


def init_server_dir(directory: Path, *extra: str, env: dict[str, str] | None = None) -> Path:
    """``estkit init`` into a fresh directory."""
    estkit("init", "--dir", str(directory), *extra, env=env)
    return directory


@contextmanager
def server(directory: Path, *, users: dict[str, str] | None = None, configure: Any = None,
           init_args: Sequence[str] = (), workers: int = 1, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Init (if needed), configure and run a server; stop it afterwards and check it exited 0."""
    if not (directory / "config.toml").exists():
        init_server_dir(directory, *init_args, env=env)
    srv = ServerProcess(directory, workers=workers, env=env or {})
    if configure is not None:
        doc = srv.config()
        configure(doc)
        srv.set_config(doc)
    for name, pw in (users or {}).items():
        srv.add_user(name, pw)
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"estkit serve exited {code}:\n{srv.log()}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    from estkit.cli.clusterdemo import find_program
    return find_program(name)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL; yields a ``postgresql+psycopg://`` URL.  Skips
    (fails under ESTKIT_REQUIRE_ALL) when PostgreSQL is not installed.  Under
    pytest-xdist each worker has its own (a private port and socket directory)."""
    no_process_in_fast_tier("PostgreSQL")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        msg = "PostgreSQL (initdb, pg_ctl) not installed"
        if REQUIRE_ALL:
            pytest.fail(msg + " (ESTKIT_REQUIRE_ALL=1)")
        pytest.skip(msg)
    base = Path(tempfile.mkdtemp(prefix="estkit-pg-"))
    os.chmod(base, 0o777)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)
    port = free_port()
    as_pg: list[str] = []
    if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    try:
        run([*as_pg, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"], timeout=120)
        run([*as_pg, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o",
             f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off -c max_connections=200", "start"],
            timeout=90)
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"
    finally:
        if (data / "postmaster.pid").exists():
            run([*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], check=False, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(pg_url: str) -> str:
    """A new, empty database on the session's PostgreSQL; returns its URL."""
    import uuid

    from sqlalchemy import create_engine, text
    name = "t_" + uuid.uuid4().hex[:12]
    eng = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return pg_url.replace("/postgres?", f"/{name}?")


@dataclass
class Reply:
    """An HTTP response as the tests look at it."""

    status: int
    headers: Any
    body: bytes
    tls_version: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def https(srv: ServerProcess, method: str, op: str, body: bytes | None = None, *, label: str | None = None,
          headers: dict[str, str] | None = None, ctx: ssl.SSLContext | None = None, path: str | None = None,
          csr_for_tls_unique: Any = None) -> Reply:
    """One request on a fresh TLS connection to a ServerProcess.

    ``csr_for_tls_unique`` is a callable given the connection's tls-unique and
    returning the body to send on that same connection (RFC 7030 §3.5 linking)."""
    import http.client
    conn = http.client.HTTPSConnection("localhost", srv.port, context=ctx or srv.ssl_context(), timeout=30)
    try:
        conn.connect()
        sock: ssl.SSLSocket = conn.sock  # type: ignore[assignment]
        if csr_for_tls_unique is not None:
            body = csr_for_tls_unique(sock.get_channel_binding("tls-unique"))
        conn.request(method, path or srv.url(op, label).split(f":{srv.port}", 1)[1], body=body,
                     headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read(), sock.version())
    finally:
        conn.close()


@dataclass(frozen=True)
class Enrolled:
    """A certificate enrolled through a running server, with its key, both also written as PEM files."""

    cert: Any  # x509.Certificate
    key: Any   # the private key
    cert_path: Path
    key_path: Path

    @property
    def tls(self) -> tuple[Path, Path]:
        """The (certificate, key) files, as ServerProcess.ssl_context takes them."""
        return self.cert_path, self.key_path


def write_credentials(directory: Path, name: str, key: Any, cert: Any) -> tuple[Path, Path]:
    """``name.pem`` and ``name.key`` (PKCS#8, unencrypted) in ``directory``."""
    from cryptography.hazmat.primitives import serialization
    cp, kp = directory / f"{name}.pem", directory / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


def enroll(srv: ServerProcess, directory: Path, cn: str, *, user: str, password: str, key_type: str = "ec:P-256",
           label: str | None = None) -> Enrolled:
    """/simpleenroll with HTTP Basic and a new key; asserts 200 and writes the pair into ``directory``."""
    from estkit.protocol import constants as c
    from estkit.protocol.csr import build_csr
    from estkit.protocol.keys import generate_key
    from estkit.protocol.pkcs7 import parse_certs_only
    key = generate_key(key_type)
    r = https(srv, "POST", "simpleenroll", base64.b64encode(build_csr(key, cn=cn)), label=label,
              headers={"Content-Type": c.CT_PKCS10, "Authorization": basic(user, password)})
    assert r.status == 200, r.body
    cert = parse_certs_only(base64.b64decode(r.body))[0]
    return Enrolled(cert, key, *write_credentials(directory, cn, key, cert))


class ApproveOnPending:
    """An ``on_pending`` callback for EstClient: records each wait, and the first
    one's request is approved by the operator's CLI in a thread (``approvals``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.waits: list[Any] = []  # PendingWait
        self.approvals: list[Any] = []  # threading.Thread

    def __call__(self, wait: Any) -> None:
        import re
        import threading
        self.waits.append(wait)
        if not self.approvals:
            rid = re.search(r"request (\d+)", wait.reason)
            assert rid is not None, wait.reason
            t = threading.Thread(target=estkit, args=("requests", "approve", rid.group(1), "--dir",
                                                      str(self.directory)))
            t.start()
            self.approvals.append(t)
