"""Health probes (/healthz, /readyz) and Prometheus metrics (server.metrics_listen),
against real ``estkit serve --workers 2`` processes; the deploy/ dashboard and
alert rules name only metrics a real scrape has (issue 13)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import signal
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from support import (ServerProcess, basic, estkit, free_port, fresh_database, https, init_server_dir,
                     postgres_server, require_tool, run, server)
from workers import https_on_worker, worker_pids

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

DEPLOY = Path(__file__).parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "estkit.json"
RULES = DEPLOY / "prometheus" / "estkit-alerts.yml"
USER, PASSWORD = "alice", "pw-alice-metrics"
AUTH = {"Authorization": basic(USER, PASSWORD), "Content-Type": "application/pkcs10"}


def _csr(cn: str) -> bytes:
    return base64.b64encode(build_csr(generate_key("ec:P-256"), cn=cn)) + b"\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("metrics") / "data"
    mport, cport = free_port(), free_port()
    init_server_dir(d, "--metrics-listen", f"127.0.0.1:{mport}")
    stale = d / "metrics"
    stale.mkdir(mode=0o755)
    (stale / "counter_999999.db").write_bytes(b"left by an earlier run")

    def configure(doc: dict[str, Any]) -> None:
        doc["server"]["crl_listen"] = f"127.0.0.1:{cport}"
        doc["labels"]["held"] = {**doc["labels"]["default"], "manual_approval": True}
    with server(d, users={USER: PASSWORD}, configure=configure, workers=2) as s:
        yield s
    assert not (d / "metrics").exists(), "the metrics directory is removed at exit"


def _metrics_url(srv: ServerProcess) -> str:
    return f"http://{srv.config()['server']['metrics_listen']}/metrics"


def scrape(srv: ServerProcess) -> dict[str, float]:
    """Every sample of one scrape: ``name{labels}`` (labels sorted) -> value."""
    with urllib.request.urlopen(_metrics_url(srv), timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        labels = ",".join(sorted(re.findall(r'[a-z_]+="[^"]*"', m.group(2) or "")))
        out[f"{m.group(1)}{{{labels}}}"] = float(m.group(3))
    return out


def enrolled(s: dict[str, float], label: str = "") -> float:
    return s.get(f'estkit_requests_total{{label="{label}",operation="simpleenroll",status="200"}}', 0.0)


# -- probes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,status,body", [
    ("GET", "/healthz", 200, b"ok\n"),
    ("GET", "/readyz", 200, b"ok\n"),
    ("HEAD", "/readyz", 200, b""),
    ("POST", "/readyz", 405, None),
    ("GET", "/healthz/x", 404, None),
], ids=["ok/healthz", "ok/readyz", "ok/readyz-head", "fail/readyz-post", "fail/below-healthz"])
def test_probes(srv: ServerProcess, method: str, path: str, status: int, body: bytes | None) -> None:
    r = https(srv, method, "", path=path)  # no credentials: probes need none
    assert r.status == status, r
    assert r.header("Content-Type") == "text/plain; charset=utf-8" or method == "HEAD"
    if body is not None:
        assert r.body == body


def test_probes_are_not_est_labels(srv: ServerProcess) -> None:
    """RFC 7030 §3.2.2: EST lives under /.well-known/est; a label named like a probe is just an unknown label."""
    assert https(srv, "GET", "cacerts", label="healthz").status == 404


# -- metrics ---------------------------------------------------------------------------------------


def test_multiproc_dir_is_private_and_fresh(srv: ServerProcess) -> None:
    d = srv.dir / "metrics"
    assert d.stat().st_mode & 0o777 == 0o700
    assert not (d / "counter_999999.db").exists(), "files of an earlier run are removed at start"


def test_counters_sum_over_both_workers_while_enrolling(srv: ServerProcess) -> None:
    before = scrape(srv)
    issued0 = before.get('estkit_certificates_issued_total{label="default"}', 0.0)
    served: set[int] = set()
    for i in range(2):  # one enrollment on each worker
        r, pid = https_on_worker(srv, "POST", "simpleenroll", _csr(f"w{i}"), avoid=served, headers=AUTH)
        assert r.status == 200, r
        served.add(pid)
    assert served == set(worker_pids(srv))
    files = {p.name for p in (srv.dir / "metrics").iterdir()}
    assert {f"counter_{pid}.db" for pid in served} <= files, files
    # More enrollments in the background while scraping: every scrape answers,
    # whichever worker takes it, and the counters never go back.
    n, errors = 6, []

    def enroll() -> None:
        for i in range(n):
            r = https(srv, "POST", "simpleenroll", _csr(f"bg{i}"), headers=AUTH)
            if r.status != 200:
                errors.append(r)
    t = threading.Thread(target=enroll)
    t.start()
    seen = [enrolled(before)]
    while t.is_alive():
        seen.append(enrolled(scrape(srv)))
        time.sleep(0.05)
    t.join()
    after = scrape(srv)
    seen.append(enrolled(after))
    assert not errors, errors
    assert seen == sorted(seen), seen
    assert enrolled(after) == enrolled(before) + 2 + n
    assert after['estkit_certificates_issued_total{label="default"}'] == issued0 + 2 + n
    assert after['estkit_request_duration_seconds_bucket{le="+Inf",operation="simpleenroll"}'] >= 2 + n
    assert after['estkit_request_duration_seconds_count{operation="simpleenroll"}'] >= 2 + n
    assert 'estkit_request_duration_seconds_bucket{le="0.1",operation="simpleenroll"}' in after


@pytest.mark.parametrize("headers,reason", [
    ({"Authorization": basic(USER, "wrong"), "Content-Type": "application/pkcs10"}, "password"),
    ({"Authorization": basic("nobody", "wrong"), "Content-Type": "application/pkcs10"}, "password"),
], ids=["fail/wrong-password", "fail/unknown-user"])
def test_auth_failures_counted(srv: ServerProcess, headers: dict[str, str], reason: str) -> None:
    key = f'estkit_auth_failures_total{{reason="{reason}"}}'
    before = scrape(srv).get(key, 0.0)
    assert https(srv, "POST", "simpleenroll", _csr("x"), headers=headers).status == 401
    assert scrape(srv)[key] == before + 1


def test_unknown_paths_do_not_create_series(srv: ServerProcess) -> None:
    """A peer choosing the path must not choose label values."""
    for i in range(3):
        https(srv, "GET", f"nosuchop{i}", label=f"nolabel{i}")
    text = "\n".join(scrape(srv))
    assert "nosuchop" not in text and "nolabel" not in text
    assert 'estkit_requests_total{label="other",operation="other",status="404"}' in text


def test_pending_gauge_follows_manual_approval(srv: ServerProcess) -> None:
    before = scrape(srv)["estkit_pending_requests{}"]
    r = https(srv, "POST", "simpleenroll", _csr("held-1"), label="held", headers=AUTH)
    assert r.status == 202, r
    assert scrape(srv)["estkit_pending_requests{}"] == before + 1
    req_id = re.search(rb"request (\d+)", r.body)
    assert req_id is not None, r.body
    estkit("requests", "approve", req_id.group(1).decode(), "--dir", str(srv.dir))
    assert scrape(srv)["estkit_pending_requests{}"] == before


def test_expiry_gauges_are_the_certificates(srv: ServerProcess) -> None:
    s = scrape(srv)
    ca = x509.load_pem_x509_certificate((srv.dir / "ca" / "root.pem").read_bytes())
    tls = x509.load_pem_x509_certificate((srv.dir / "tls" / "server.pem").read_bytes())
    crl_at = f"http://{srv.config()['server']['crl_listen']}/crl/default.crl"
    with urllib.request.urlopen(crl_at, timeout=10) as r:
        crl = x509.load_der_x509_crl(r.read())
    assert s['estkit_ca_not_after_timestamp_seconds{ca="default"}'] == ca.not_valid_after_utc.timestamp()
    assert s["estkit_tls_not_after_timestamp_seconds{}"] == tls.not_valid_after_utc.timestamp()
    assert crl.next_update_utc is not None
    assert s['estkit_crl_next_update_timestamp_seconds{ca="default"}'] == crl.next_update_utc.timestamp()


def test_dead_worker_counts_stay_in_the_sum(srv: ServerProcess) -> None:
    """A worker killed and restarted: what it counted is still in the sum (counters never go back)."""
    r, pid = https_on_worker(srv, "POST", "simpleenroll", _csr("before-kill"), avoid=set(), headers=AUTH)
    assert r.status == 200
    before = enrolled(scrape(srv))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while pid in worker_pids(srv) or len(worker_pids(srv)) < 2:
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.1)
    assert enrolled(scrape(srv)) == before


# -- deploy/: dashboard and alert rules ------------------------------------------------------------


def _exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    # promtool (below) checks the YAML and PromQL; here only each rule's expression line.
    exprs += re.findall(r"^\s+expr: (.+)$", RULES.read_text(), re.M)
    assert len(exprs) >= 10 + 5, exprs
    return exprs


def test_dashboard_and_rules_use_only_real_metrics(srv: ServerProcess) -> None:
    # Make every kind of series exist: an issuance, a failed login (the CRL and gauges are there).
    assert https(srv, "POST", "simpleenroll", _csr("names"), headers=AUTH).status == 200
    assert https(srv, "POST", "simpleenroll", _csr("names"), headers={**AUTH, "Authorization": basic(USER, "x")}
                 ).status == 401
    names = {k.split("{", 1)[0] for k in scrape(srv)}
    used = {n for e in _exprs() for n in re.findall(r"estkit_[a-z_]+", e)}
    assert len(used) >= 8, used
    assert used <= names, f"not in a real scrape: {sorted(used - names)}"
    for alert in ("30 * 86400", "estkit_crl_next_update_timestamp_seconds", 'status=~"5.."',
                  "estkit_auth_failures_total"):
        assert any(alert in e for e in _exprs()), alert


@pytest.mark.parametrize("broken", [False, True], ids=["ok/shipped-rules", "fail/broken-expr"])
def test_promtool_checks_the_rules(tmp_path: Path, broken: bool) -> None:
    require_tool("promtool")
    text = RULES.read_text()
    if broken:
        text = text.replace("time() < 30 * 86400", "time( < 30 * 86400", 1)
    f = tmp_path / "rules.yml"
    f.write_text(text)
    p = run(["promtool", "check", "rules", str(f)], check=False)
    assert (p.returncode != 0) == broken, p
    if not broken:
        assert b"SUCCESS: 5 rules found" in p.stdout, p


# -- readiness failures and the listener being off -------------------------------------------------


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the point is an expired server certificate
    return ctx


def _wait_status(srv: ServerProcess, path: str, status: int, ctx: ssl.SSLContext | None = None) -> bytes:
    deadline = time.monotonic() + 15
    while True:
        r = https(srv, "GET", "", path=path, ctx=ctx)
        if r.status == status or time.monotonic() > deadline:
            assert r.status == status, r
            return r.body
        time.sleep(0.2)


def test_readyz_503_when_the_tls_certificate_expired(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "d")
    ca_key = serialization.load_pem_private_key((d / "ca" / "root.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((d / "ca" / "root.pem").read_bytes())
    old = x509.load_pem_x509_certificate((d / "tls" / "server.pem").read_bytes())
    now = dt.datetime.now(dt.UTC)
    expired = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject)
               .public_key(old.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=2)).not_valid_after(now - dt.timedelta(days=1))
               .add_extension(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, False)
               .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (d / "tls" / "server.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    # Renewal off: otherwise the server renews it from its CA at the start (test_tls_renewal.py).
    with server(d, workers=2, configure=lambda doc: doc["server"].update(tls_renew_before_days=0)) as srv:
        assert _wait_status(srv, "/healthz", 200, _insecure()) == b"ok\n"
        body = _wait_status(srv, "/readyz", 503, _insecure())
        assert body.startswith(b"tls: the server certificate expired at ") and body.count(b"\n") == 1, body


def test_readyz_503_when_the_store_is_down(tmp_path: Path) -> None:
    with postgres_server() as pg:
        url = fresh_database(pg)
        env = {"ESTKIT_STORE_URL": url}
        mport = free_port()
        d = init_server_dir(tmp_path / "d", "--metrics-listen", f"127.0.0.1:{mport}", env=env)
        srv = ServerProcess(d, workers=2, env=env).start()
        try:
            assert _wait_status(srv, "/readyz", 200) == b"ok\n"
            sock = Path(re.search(r"host=([^&]+)", url).group(1))  # type: ignore[union-attr]
            as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            pg_ctl = shutil.which("pg_ctl") or str(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1])
            run([*as_pg, pg_ctl, "-D", str(sock.parent / "data"), "-m", "immediate", "-w", "stop"], timeout=60)
            assert _wait_status(srv, "/readyz", 503) == b"store: unavailable\n"
            assert _wait_status(srv, "/healthz", 200) == b"ok\n"  # the process still serves
            s = scrape(srv)  # still answers, without what only the store knows
            assert "estkit_pending_requests{}" not in s and 'estkit_ca_not_after_timestamp_seconds{ca="default"}' in s
        finally:
            srv.stop()


def _listening_ports(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if m:
                inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            f = row.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_listener_off_by_default(tmp_path: Path) -> None:
    with server(tmp_path / "d", workers=2) as srv:
        assert srv.config()["server"]["metrics_listen"] == ""
        assert srv.proc is not None
        assert _listening_ports([srv.proc.pid, *worker_pids(srv)]) == {srv.port}
        assert not (srv.dir / "metrics").exists()
        assert https(srv, "GET", "", path="/readyz").body == b"ok\n"


@pytest.mark.parametrize("value", ["nohost", "127.0.0.1:99999", "127.0.0.1:x"],
                         ids=["fail/no-port", "fail/port-range", "fail/port-not-a-number"])
def test_init_refuses_a_bad_metrics_listen(tmp_path: Path, value: str) -> None:
    p = estkit("init", "--dir", str(tmp_path / "d"), "--metrics-listen", value, check=False)
    assert p.returncode != 0 and b"--metrics-listen" in p.stderr, p
