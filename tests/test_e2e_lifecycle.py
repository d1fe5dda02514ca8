"""Server lifecycle end to end: restart, PostgreSQL, failing store, signals, quickstart."""

from __future__ import annotations

import base64
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from support import ESTKIT, ServerProcess, basic, free_port, fresh_database, https, require_tool, run, server

from estkit.protocol.csr import build_csr
from estkit.protocol.framing import decode_b64
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

PKCS10 = {"Content-Type": "application/pkcs10"}


def _enroll(srv: ServerProcess, key, cn: str, user=("alice", "pw-alice")) -> x509.Certificate:  # type: ignore[no-untyped-def]
    r = https(srv, "POST", "simpleenroll", base64.b64encode(build_csr(key, cn=cn)) + b"\n",
              headers={**PKCS10, "Authorization": basic(*user)})
    assert r.status == 200, r.body
    return parse_certs_only(decode_b64(r.body))[0]


def _save(tmp: Path, key, cert: x509.Certificate) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    c, k = tmp / "c.pem", tmp / "k.pem"
    c.write_bytes(cert.public_bytes(Encoding.PEM))
    k.write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return c, k


def test_ok_restart_keeps_everything(tmp_path: Path) -> None:
    d = tmp_path / "data"
    key = generate_key("ec:P-256")
    with server(d, users={"alice": "pw-alice"}) as srv:
        cert = _enroll(srv, key, "survivor")
    with server(d) as srv:  # same directory, new process: users, CA and issued certificates persist
        cpath, kpath = _save(tmp_path, key, cert)
        r = https(srv, "POST", "simplereenroll", base64.b64encode(build_csr(key, cn="survivor")) + b"\n",
                  headers=PKCS10, ctx=srv.ssl_context(cpath, kpath))
        assert r.status == 200, r.body
        _enroll(srv, generate_key("ec:P-256"), "after-restart")
    out = run([ESTKIT, "user", "list", "--dir", str(d)]).stdout.decode()
    assert out.startswith("alice\t")


@pytest.mark.parametrize("workers", [1, 2])
def test_ok_serve_on_postgresql(tmp_path: Path, pg_url: str, workers: int) -> None:
    url = fresh_database(pg_url)
    env = {"ESTKIT_STORE_URL": url}
    with server(tmp_path / "data", users={"alice": "pw-alice"}, env=env, workers=workers) as srv:
        certs = [_enroll(srv, generate_key("ec:P-256"), f"pg{i}") for i in range(4)]
    from sqlalchemy import create_engine, text
    eng = create_engine(url)
    with eng.connect() as conn:
        serials = {int(s, 16) for (s,) in conn.execute(text("SELECT serial FROM certificates WHERE label='default'"))}
        users = [n for (n,) in conn.execute(text("SELECT name FROM users"))]
        init_records = conn.execute(text("SELECT count(*) FROM certificates WHERE requester='estkit init'")).scalar()
    eng.dispose()
    assert {c.serial_number for c in certs} <= serials and users == ["alice"]
    assert init_records == 1  # init recorded the TLS server certificate in PostgreSQL too
    assert not (tmp_path / "data" / "estkit.db").exists()


def test_fail_store_failure_gives_500_and_no_certificate(tmp_path: Path) -> None:
    d = tmp_path / "data"
    with server(d, users={"alice": "pw-alice"}) as srv:
        db = sqlite3.connect(d / "estkit.db")
        db.execute("CREATE TRIGGER fail_insert BEFORE INSERT ON certificates WHEN NEW.subject = 'CN=fail-store' "
                   "BEGIN SELECT RAISE(ABORT, 'injected store failure'); END;")
        db.commit()
        before = db.execute("SELECT count(*) FROM certificates").fetchone()[0]
        r = https(srv, "POST", "simpleenroll", base64.b64encode(build_csr(generate_key("ec:P-256"), cn="fail-store")),
                  headers={**PKCS10, "Authorization": basic("alice", "pw-alice")})
        assert r.status == 500 and r.body == b"the certificate could not be recorded; nothing was issued\n"
        assert b"BEGIN" not in r.body and b"Traceback" not in r.body
        assert db.execute("SELECT count(*) FROM certificates").fetchone()[0] == before
        _enroll(srv, generate_key("ec:P-256"), "still-works")  # the server goes on
        db.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ok_clean_exit_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    srv = ServerProcess(tmp_path / "data", workers=2)
    run([ESTKIT, "init", "--dir", str(srv.dir)])
    srv.start()
    assert https(srv, "GET", "cacerts").status == 200
    assert srv.proc is not None
    srv.proc.send_signal(sig)
    assert srv.proc.wait(15) == 0


def test_ok_default_ca_literal_person_pipeline(tmp_path: Path) -> None:
    """The issue's literal commands on a default (root-only, P-256) CA: responses are short
    enough for `openssl base64 -d` without -A (it silently fails on lines over ~1000 chars)."""
    require_tool("curl", "openssl")
    with server(tmp_path / "data", users={"alice": "pw-alice"}) as srv:
        ca = srv.ca_pem
        out = run(["sh", "-c", f"curl -sf --cacert {ca} {srv.url('cacerts')} | openssl base64 -d "
                               "| openssl pkcs7 -inform DER -print_certs"]).stdout.decode()
        assert "subject=CN = estkit Root CA" in out
        run(["sh", "-c", f"cd {tmp_path} && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                         "-keyout d.key -subj /CN=literal -outform DER 2>/dev/null | openssl base64 > d.b64 && "
                         f"curl -sf --cacert {ca} --user alice:pw-alice -H 'Content-Type: application/pkcs10' "
                         f"--data-binary @d.b64 {srv.url('simpleenroll')} | openssl base64 -d "
                         "| openssl pkcs7 -inform DER -print_certs -out d.pem"])
        assert b": OK" in run(["openssl", "verify", "-CAfile", str(ca), str(tmp_path / "d.pem")]).stdout


def test_ok_quickstart_prints_a_working_curl_command(tmp_path: Path) -> None:
    """What `make run` does: init on first run, a generated demo password, a curl command that enrolls."""
    require_tool("curl", "openssl")
    port = free_port()
    d = tmp_path / "estkit-data"
    proc = subprocess.Popen([ESTKIT, "quickstart", "--dir", str(d), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            lines.append(line)
            if "Stop with Ctrl-C" in line:
                break
        text = "".join(lines)
        password = re.search(r"demo user: demo\s+password: (\S+)", text).group(1)  # type: ignore[union-attr]
        assert len(password) >= 20 and (d / "ca.pem").exists()
        cmds = text.split("Enroll with curl and openssl:\n", 1)[1].split("\nStop with", 1)[0]
        script = cmds.replace("\\\n", " ")
        srv = ServerProcess(d, port=port)
        ready, last = False, ""
        deadline = time.monotonic() + 20
        while not ready and time.monotonic() < deadline:  # sleeps between tries, fails when never ready
            try:
                r = https(srv, "GET", "cacerts")
                ready, last = r.status == 200, f"HTTP {r.status}"
            except OSError as exc:
                last = repr(exc)
            if not ready:
                time.sleep(0.1)
        assert ready, f"quickstart never served /cacerts within 20 s (last: {last})\n{text}"
        out = run(["sh", "-ec", script], cwd=tmp_path)
        assert b"device.pem: OK" in out.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    # second run: no new CA, same password
    again = run([ESTKIT, "user", "list", "--dir", str(d)]).stdout.decode()
    assert again.startswith("demo\t")


def test_ok_idle_keepalive_connections_do_not_block_others(tmp_path: Path) -> None:
    """libest's server stops answering anyone with 5 idle keep-alive connections open; estkit must not."""
    import socket
    import ssl
    with server(tmp_path / "data", users={"alice": "pw-alice"}) as srv:
        idle: list[ssl.SSLSocket] = []
        try:
            for _ in range(40):
                raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s = srv.ssl_context().wrap_socket(raw, server_hostname="localhost")
                s.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n")
                s.recv(65536)  # one answered request, then the connection idles with keep-alive
                idle.append(s)
            half = socket.create_connection(("127.0.0.1", srv.port), timeout=5)  # a TCP connection that never handshakes
            started = time.monotonic()
            _enroll(srv, generate_key("ec:P-256"), "not-blocked")
            assert time.monotonic() - started < 5
            half.close()
        finally:
            for s in idle:
                s.close()


def test_fail_trickled_body_gets_408(tmp_path: Path) -> None:
    import socket

    def configure(doc: dict) -> None:  # type: ignore[type-arg]
        doc["server"]["body_timeout_seconds"] = 1
    with server(tmp_path / "data", users={"alice": "pw-alice"}, configure=configure) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s = srv.ssl_context().wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                  b"Authorization: " + basic("alice", "pw-alice").encode() + b"\r\n"
                  b"Content-Type: application/pkcs10\r\nContent-Length: 500\r\n\r\nMIIB")
        reply = s.recv(65536)
        s.close()
        assert reply.startswith(b"HTTP/1.1 408") and reply.endswith(b"request body not received in time\n")
        _enroll(srv, generate_key("ec:P-256"), "after-408")


def test_ok_two_nodes_share_one_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Several nodes: same CA files, one PostgreSQL; a certificate issued by one node renews on the other
    and concurrent enrollments on both never collide."""
    import shutil
    import threading
    env = {"ESTKIT_STORE_URL": fresh_database(pg_url)}
    a_dir, b_dir = tmp_path / "node-a", tmp_path / "node-b"
    run([ESTKIT, "init", "--dir", str(a_dir)], env=env)
    shutil.copytree(a_dir, b_dir)
    with server(a_dir, users={"alice": "pw-alice"}, env=env) as a, server(b_dir, env=env) as b:
        key = generate_key("ec:P-256")
        cert = _enroll(a, key, "roaming")
        cpath, kpath = _save(tmp_path, key, cert)
        r = https(b, "POST", "simplereenroll", base64.b64encode(build_csr(key, cn="roaming")) + b"\n",
                  headers=PKCS10, ctx=b.ssl_context(cpath, kpath))
        assert r.status == 200, r.body
        issued: list[int] = []

        def burst(node: ServerProcess, n: int) -> None:
            for i in range(n):
                issued.append(_enroll(node, generate_key("ec:P-256"), f"{node.port}-{i}").serial_number)
        threads = [threading.Thread(target=burst, args=(node, 6)) for node in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(issued) == 24 and len(set(issued)) == 24
    from sqlalchemy import create_engine, text
    eng = create_engine(env["ESTKIT_STORE_URL"])
    with eng.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM certificates WHERE label='default'")).scalar()
    eng.dispose()
    assert count == 26


def test_ok_sigterm_right_after_listening_is_a_clean_stop(tmp_path: Path) -> None:
    """The port accepts connections before the workers install their handlers; a stop
    signal in that window is held, not fatal (exit 0, not -15)."""
    run([ESTKIT, "init", "--dir", str(tmp_path / "data")])
    for _ in range(8):
        srv = ServerProcess(tmp_path / "data").start()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0, srv.log()
