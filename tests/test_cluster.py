"""A real cluster: 3 ``estkit serve`` nodes on one PostgreSQL behind HAProxy
in TLS passthrough (deploy/haproxy/passthrough.cfg, PROXY protocol v2), under
load, with nodes stopped, killed and restarted (issue 14).

One cluster for the module; each load runs a few seconds.  Every figure a
test measures (enrollments, 5xx, connection errors) is printed (-s shows it).
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster import (DEPLOY, PASSWORD, USER, Haproxy, Load, kill9, make_cluster_dirs, node, node_env, start_all,
                     start_postgres, stop_all, stop_postgres,
                     stored_serials)
from support import ServerProcess, basic, estkit, free_port, fresh_database, postgres_server

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only
from estkit.server.proxyproto import encode_v2

pytestmark = pytest.mark.e2e

NODES = 3
CLIENTS = 16


@dataclass
class Cluster:
    store_url: str
    nodes: list[ServerProcess]
    haproxy: Haproxy

    @property
    def ca_pem(self) -> Path:
        return self.nodes[0].ca_pem

    def all_up(self) -> dict[str, str]:
        def up(states: dict[str, str]) -> bool:
            checked = {k: v for k, v in states.items() if not k.endswith("-fallback")}
            return len(checked) == len(self.nodes) and all(v == "UP" for v in checked.values())
        return self.haproxy.wait_states(up)


def _configure(doc: dict[str, Any]) -> None:
    doc["server"].update(drain_seconds=2, proxy_protocol=True, trusted_proxies=["127.0.0.1"],
                         auth_address_failures_per_minute=2)
    doc["labels"]["approval"] = {"ca": next(iter(doc["cas"])), "manual_approval": True, "pending_retry_after": 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    with postgres_server() as pg:
        url = fresh_database(pg)
        nodes = [node(d, free_port()) for d in make_cluster_dirs(base, url, NODES, configure=_configure)]
        try:
            nodes[0].start()  # migrates the schema; then the others, together
            start_all(nodes[1:])
            hp = Haproxy(DEPLOY / "passthrough.cfg", {**node_env([f"127.0.0.1:{n.port}" for n in nodes]),
                                                      "ESTKIT_NODE_CA": str(nodes[0].ca_pem)}, base).start()
            c = Cluster(url, nodes, hp)
            c.all_up()
            yield c
        finally:
            stop_all(nodes)
            if "hp" in locals():
                hp.stop()


def _get(port: int, ca: Path, path: str, *, source: str = "127.0.0.1", prefix: bytes = b"",
         auth: str | None = None, method: str = "GET", body: bytes | None = None) -> int:
    """A request over a fresh TLS connection from ``source``, with ``prefix``
    sent before the TLS handshake (a PROXY header); the status."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        raw.sendall(prefix)
        ctx = ssl.create_default_context(cafile=str(ca))
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        conn = http.client.HTTPConnection("localhost", port, timeout=10)
        conn.sock = tls
        headers = {"Content-Type": "application/pkcs10"} if body else {}
        conn.request(method, path, body=body, headers={**headers, **({"Authorization": auth} if auth else {})})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        raw.close()


def _logs(c: Cluster) -> str:
    return "\n".join(n.log() for n in c.nodes)


# -- PROXY protocol v2 ----------------------------------------------------------------------------

@pytest.mark.parametrize("source,header,served,logged", [
    ("127.0.0.1", encode_v2(("192.0.2.77", 4242)), True, "192.0.2.77:4242 - cacerts - 200"),
    ("127.0.0.2", b"", True, "127.0.0.2:"),
    ("127.0.0.1", b"", False, "proxy-header - refused"),
    ("127.0.0.2", encode_v2(("192.0.2.78", 4343)), False, "127.0.0.2:"),
], ids=["ok/trusted-proxy-with-header", "ok/direct-client-without-header",
        "fail/trusted-proxy-without-header", "fail/untrusted-with-header"])
def test_proxy_header_only_from_trusted_proxies(cluster: Cluster, source: str, header: bytes, served: bool,
                                                logged: str) -> None:
    """[server] proxy_protocol with trusted_proxies = ["127.0.0.1"], straight to a node."""
    n = cluster.nodes[0]
    if served:
        assert _get(n.port, n.ca_pem, "/.well-known/est/cacerts", source=source, prefix=header) == 200
    else:
        with pytest.raises((ssl.SSLError, OSError)):
            _get(n.port, n.ca_pem, "/.well-known/est/cacerts", source=source, prefix=header)
    deadline = time.monotonic() + 5
    while logged not in n.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged in n.log()
    assert "192.0.2.78" not in n.log()  # an untrusted peer's header names nobody


def test_throttle_and_access_log_see_the_real_client_through_haproxy(cluster: Cluster) -> None:
    """Through HAProxy every connection comes from 127.0.0.1; with the PROXY
    header the failed-login throttle counts 127.0.0.4 (2 a minute per node here)
    and leaves 127.0.0.5 alone, and the access log names them."""
    port, ca = cluster.haproxy.port, cluster.ca_pem
    statuses = []
    for _ in range(2 * NODES + 2):
        statuses.append(_get(port, ca, "/.well-known/est/simpleenroll", source="127.0.0.4", method="POST",
                             body=b"MAA=\n", auth=basic(USER, "wrong-password")))
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    # The right password from another address is not throttled (it is a bad CSR: 400, after authentication).
    assert _get(port, ca, "/.well-known/est/simpleenroll", source="127.0.0.5", method="POST", body=b"MAA=\n",
                auth=basic(USER, PASSWORD)) == 400
    logs = _logs(cluster)
    assert "127.0.0.4:" in logs and "127.0.0.5:" in logs


# -- stops, kills and restarts under load ---------------------------------------------------------

def _loaded(load: Load, n: int = 20, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while load.out.ok < n:
        assert time.monotonic() < deadline, load.out.summary()
        time.sleep(0.05)


def test_rolling_restart_under_load_fails_no_enrollment(cluster: Cluster) -> None:
    """SIGTERM each node in turn while 12 clients enroll without retrying
    (issue 14: 5-8 failed before draining); restart it, wait until HAProxy
    has it back, next."""
    # A wrong password from 127.0.0.6 through HAProxy: the audit trail names that
    # address (a stop writes each node's failed logins, aggregated per minute and
    # user name: a name of its own keeps this row apart from other tests').
    assert _get(cluster.haproxy.port, cluster.ca_pem, "/.well-known/est/simpleenroll", source="127.0.0.6",
                method="POST", body=b"MAA=\n", auth=basic("audit-probe", "wrong-password")) == 401
    load = Load(cluster.haproxy.port, cluster.ca_pem, clients=12, retry=False).start()
    try:
        _loaded(load)
        for n in cluster.nodes:
            assert n.stop() == 0, n.log()[-2000:]
            n.start()
            cluster.all_up()
    finally:
        out = load.stop()
    print(f"\nrolling restart of {NODES} nodes: {out.summary()}")
    assert out.failed_clients == 0 and out.errors_5xx == 0 and not out.conn_errors, out.summary()
    assert set(out.serials) <= stored_serials(cluster.store_url)
    assert _audited_failures(cluster.store_url, "127.0.0.6") >= 1


def _audited_failures(store_url: str, address: str) -> int:
    from sqlalchemy import create_engine, text
    eng = create_engine(store_url)
    try:
        with eng.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM audit WHERE event = 'auth-failed' AND peer = :a"),
                                    {"a": address}).scalar_one())
    finally:
        eng.dispose()


def test_kill_nodes_under_load_loses_no_certificate(cluster: Cluster) -> None:
    """kill -9 one node, then another, while 16 clients enroll and retry
    through HAProxy: every certificate a client got is in the store, every
    client finishes; the 5xx and connection errors are counted."""
    load = Load(cluster.haproxy.port, cluster.ca_pem, clients=CLIENTS, retry=True).start()
    try:
        _loaded(load)
        for victim in cluster.nodes[:2]:
            kill9(victim)
            seen = load.out.ok
            _loaded(load, seen + 20)  # the survivors carry on
    finally:
        out = load.stop()
    print(f"\nkill -9 of 2 of {NODES} nodes: {out.summary()}; 5xx: {out.errors_5xx}; "
          f"connection errors: {sum(out.conn_errors.values())}")
    assert out.failed_clients == 0, out.summary()
    missing = set(out.serials) - stored_serials(cluster.store_url)
    assert not missing, f"{len(missing)} certificates handed out but not in the store"
    for n in cluster.nodes[:2]:
        n.start()
    cluster.all_up()


def test_postgres_restart_under_load_503_then_recovers(cluster: Cluster) -> None:
    """PostgreSQL stopped (as if it crashed) for 2 s under load: requests meanwhile
    get 503 with Retry-After, never a 500 nor a certificate the store lacks;
    the nodes serve again within seconds of its return, without a restart."""
    load = Load(cluster.haproxy.port, cluster.ca_pem, clients=CLIENTS, retry=True).start()
    try:
        _loaded(load)
        stop_postgres(cluster.store_url)
        before = dict(load.out.statuses)
        time.sleep(2)
        during = {st: n - before.get(st, 0) for st, n in load.out.statuses.items()}
        start_postgres(cluster.store_url)
        back = time.monotonic()
        seen = load.out.ok
        _loaded(load, seen + 20)
        recovered = time.monotonic() - back
    finally:
        out = load.stop()
    print(f"\nPostgreSQL down 2 s: during the outage {during}; back {recovered:.2f}s after it returned; "
          f"{out.summary()}")
    assert during.get(503, 0) > 0 and out.retry_after_503 >= during.get(503, 0), during
    assert not any(st >= 500 and st != 503 for st in out.statuses), out.summary()
    assert out.failed_clients == 0, out.summary()
    assert recovered < 5, recovered
    missing = set(out.serials) - stored_serials(cluster.store_url)
    assert not missing, f"{len(missing)} certificates handed out but not in the store"
    cluster.all_up()


# -- state shared through the store ---------------------------------------------------------------

def _node_ca(c: Cluster, i: int) -> Any:
    """The CA and revocation objects a node builds from its own directory (own engine)."""
    from estkit.cli.wiring import build_authority, build_revocation, build_store
    from estkit.config import load_config
    cfg = load_config(c.nodes[i].dir)
    return build_revocation(build_authority(cfg, build_store(cfg)))


def test_concurrent_revocations_on_several_nodes_publish_every_one(cluster: Cluster) -> None:
    """Revocations on every node at once (one CA object per node, each with its own
    database connections, as in separate processes): CRL numbers are unique and
    grow, and the last CRL lists every revoked certificate (one signer at a time)."""
    from together import together
    load = Load(cluster.haproxy.port, cluster.ca_pem, clients=4, retry=True, pace=0).start()
    _loaded(load, 12)
    serials = load.stop().serials[:12]
    revs = [_node_ca(cluster, i % NODES) for i in range(len(serials))]
    before = revs[0].ca.store.get_crl("default")
    results = together(len(serials), lambda i: revs[i].revoke(serials[i], "keyCompromise", identity="admin:test"))
    assert all(r.changed for r in results)
    crl = x509.load_der_x509_crl(revs[0].ca.store.get_crl("default").der)
    listed = {r.serial_number for r in crl}
    missing = set(serials) - listed
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    print(f"\n{len(serials)} revocations at once on {NODES} nodes: CRL number {before.number if before else 0} -> "
          f"{number}; {len(missing)} revoked certificates missing from the last CRL")
    assert not missing
    assert number == (before.number if before else 0) + len(serials)  # one CRL per revocation, none lost


def _enroll_on(n: ServerProcess, auth: str, cn: str, *, label: str | None = None,
               cert: tuple[Path, Path] | None = None, op: str = "simpleenroll",
               source: str = "127.0.0.2", key: Any = None) -> tuple[int, bytes, Any]:
    """An enrollment straight to node ``n``, as a direct client (not 127.0.0.1: no PROXY header);
    each test its own ``source``, so that one test's 401s do not throttle the next."""
    ctx = ssl.create_default_context(cafile=str(n.ca_pem))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    conn = http.client.HTTPSConnection("localhost", n.port, context=ctx, timeout=30, source_address=(source, 0))
    body = base64.b64encode(build_csr(key or generate_key("ec:P-256"), cn=cn)) + b"\n"
    try:
        path = f"/.well-known/est/{label}/{op}" if label else f"/.well-known/est/{op}"
        conn.request("POST", path, body=body, headers={"Content-Type": "application/pkcs10",
                                                       **({"Authorization": auth} if auth else {})})
        r = conn.getresponse()
        return r.status, r.read(), r.headers
    finally:
        conn.close()


def _admin(c: Cluster, *args: str, input: str | None = None) -> str:
    """An operator's command, on the first node's directory (the shared store)."""
    return estkit(*args, "--dir", str(c.nodes[0].dir), input=input).stdout.decode()


# What each change makes of the old password on every node, and of the new one.
_CHANGES = {"password": (401, 200), "disable": (401, None), "policy": (403, None)}


def test_user_changes_hold_on_every_node_at_once(cluster: Cluster) -> None:
    """Every node has just verified each user's password (its verification
    cache holds it); a change made once (the operator's CLI on the shared
    store: new password, disabled, a policy rule) holds on every node for the
    very next request: no cache outlives it."""
    from together import together
    old, new = "old-password-1", "new-password-2"
    names = [f"u-{change}" for change in _CHANGES]
    together(len(names), lambda i: _admin(cluster, "user", "add", names[i], "--password-stdin", input=old + "\n"))
    src = {name: f"127.0.2.{i + 1}" for i, name in enumerate(names)}  # one address each: 401s throttle per address
    jobs = [(n, name) for n in cluster.nodes for name in names]
    warm = together(len(jobs), lambda i: _enroll_on(jobs[i][0], basic(jobs[i][1], old), "warm",
                                                    source=src[jobs[i][1]])[0])
    assert set(warm) == {200}, warm
    together(len(names), lambda i: _admin(cluster, "user", "set", names[i], *{
        "u-password": ["--password-stdin"], "u-disable": ["--disable"], "u-policy": ["--cn", "only-this-*"]}[names[i]],
        input=new + "\n" if names[i] == "u-password" else None))
    checks = [(n, name, pw, want) for n, name in jobs
              for pw, want in zip((old, new), _CHANGES[name[2:]]) if want is not None]
    got = together(len(checks), lambda i: _enroll_on(checks[i][0], basic(checks[i][1], checks[i][2]), "after",
                                                     source=src[checks[i][1]])[0])
    assert got == [want for *_, want in checks], list(zip([(n.port, name, pw) for n, name, pw, _ in checks], got))


def test_revocation_holds_on_every_node_at_once(cluster: Cluster, tmp_path: Path) -> None:
    """A certificate revoked once is refused for re-enrollment by every node, at the next request."""
    key = generate_key("ec:P-256")
    ctx_key = tmp_path / "k.pem"
    ctx_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    status, body, _h = _enroll_on(cluster.nodes[0], basic(USER, PASSWORD), "revoke-me", key=key, source="127.0.2.4")
    assert status == 200
    cert = parse_certs_only(base64.b64decode(body))[0]
    cert_pem = tmp_path / "c.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for n in cluster.nodes:  # re-enrollment with it works everywhere first
        assert _enroll_on(n, "", "revoke-me", cert=(cert_pem, ctx_key), op="simplereenroll",
                          source="127.0.2.4")[0] == 200
    _admin(cluster, "revoke", format(cert.serial_number, "x"), "--reason", "keyCompromise")
    for n in cluster.nodes:
        status, body, _h = _enroll_on(n, "", "revoke-me", cert=(cert_pem, ctx_key), op="simplereenroll",
                                      source="127.0.2.4")
        assert status == 403 and b"revoked" in body, (n.port, status, body)


def test_one_time_code_and_rate_limit_hold_across_nodes(cluster: Cluster) -> None:
    """9 enrollments at once, 3 on each node: a one-time code enrolls exactly
    once, a 2/hour rate exactly twice."""
    from together import together
    _admin(cluster, "user", "add", "otc", "--one-time", "--password-stdin", input="one-time-code-1\n")
    _admin(cluster, "user", "add", "rated", "--rate", "2/hour", "--password-stdin", input="rated-password-1\n")
    for name, pw, allowed in (("otc", "one-time-code-1", 1), ("rated", "rated-password-1", 2)):
        statuses = together(9, lambda i: _enroll_on(cluster.nodes[i % NODES], basic(name, pw), f"{name}-{i}",
                                                    source=f"127.0.3.{i + 1}")[0])
        assert statuses.count(200) == allowed and set(statuses) <= {200, 401, 403}, (name, statuses)


def test_pending_request_is_retried_through_any_node(cluster: Cluster) -> None:
    """RFC 7030 §4.2.3: a request held for approval on one node is approved by
    the operator and collected on another; a third gets the same certificate."""
    key = generate_key("ec:P-256")  # the same CSR each time (ECDSA signatures differ: same key and names)
    auth = basic(USER, PASSWORD)
    status, body, headers = _enroll_on(cluster.nodes[0], auth, "pending-dev", label="approval", key=key,
                                       source="127.0.2.5")
    assert status == 202 and headers.get("Retry-After"), body
    listed = _admin(cluster, "requests", "list", "--status", "pending")
    request_id = next(line.split()[0] for line in listed.splitlines() if "pending" in line and "approval" in line)
    _admin(cluster, "requests", "approve", request_id)
    got = [_enroll_on(n, auth, "pending-dev", label="approval", key=key, source="127.0.2.5")
           for n in cluster.nodes[1:]]
    assert [g[0] for g in got] == [200, 200], [g[1] for g in got]
    assert got[0][1] == got[1][1]  # the same certificate, whichever node is asked
