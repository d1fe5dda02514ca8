"""Both HAProxy modes of deploy/haproxy/ with real clients (issue 14): TLS
passthrough with the PROXY protocol (passthrough.cfg) and TLS terminated at
HAProxy, which forwards the client's certificate and tls-unique to each
node's proxy listener (terminate.cfg).  Through each: curl + openssl,
strongSwan's ``pki`` (TLS 1.2), and ``estclient`` enroll with tls-unique
linking (RFC 7030 §3.5) and re-enroll with the certificate it got.

One cluster for the module: 2 nodes on PostgreSQL, node1's proxy listener on
loopback TCP, node2's on a Unix socket; both HAProxies in front of them.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster import DEPLOY, PASSWORD, USER, Haproxy, make_cluster_dirs, node, node_env, start_all, stop_all
from cryptography import x509
from support import VENV_BIN, ServerProcess, basic, free_port, fresh_database, postgres_server, require_tool, run

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e

ESTCLIENT = str(VENV_BIN / "estclient")
MODES = ["passthrough", "terminate"]


@dataclass
class Modes:
    nodes: list[ServerProcess]
    proxies: dict[str, Haproxy]
    proxy_ports: list[int]

    @property
    def ca_pem(self) -> Path:
        return self.nodes[0].ca_pem

    def url(self, mode: str) -> str:
        return f"https://localhost:{self.proxies[mode].port}"


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Modes]:
    require_tool("haproxy", "curl", "openssl", "pki")
    base = tmp_path_factory.mktemp("modes")

    def configure(doc: dict[str, Any]) -> None:
        doc["server"].update(proxy_protocol=True, trusted_proxies=["127.0.0.1"], drain_seconds=1)
        doc["labels"]["linked"] = {"ca": next(iter(doc["cas"])), "require_linking": True}

    with postgres_server() as pg:
        dirs = make_cluster_dirs(base, fresh_database(pg), 2, configure=configure)
        proxy_port = free_port()
        listens = [f"127.0.0.1:{proxy_port}", f"unix:{dirs[1] / 'proxy.sock'}"]
        for d, listen in zip(dirs, listens):
            text = (d / "config.toml").read_text().replace("[server]\n", f'[server]\nproxy_listen = "{listen}"\n', 1)
            (d / "config.toml").write_text(text)
        nodes = [node(d, free_port()) for d in dirs]
        proxies: dict[str, Haproxy] = {}
        try:
            nodes[0].start()
            start_all(nodes[1:])
            pem = base / "front.pem"  # the EST server certificate HAProxy presents: the nodes' own
            pem.write_bytes((dirs[0] / "tls/server.pem").read_bytes() + (dirs[0] / "tls/server.key").read_bytes())
            common = {"ESTKIT_NODE_CA": str(nodes[0].ca_pem)}
            for mode, env in (("passthrough", node_env([f"127.0.0.1:{n.port}" for n in nodes])),
                              ("terminate", {**node_env([f"127.0.0.1:{proxy_port}", str(dirs[1] / "proxy.sock")]),
                                             "ESTKIT_PROXY_PEM": str(pem), "ESTKIT_CLIENT_CA": str(nodes[0].ca_pem)})):
                work = base / mode
                work.mkdir()
                proxies[mode] = Haproxy(DEPLOY / f"{mode}.cfg", {**common, **env}, work).start()
            for hp in proxies.values():
                hp.wait_states(lambda s: all(v == "UP" for k, v in s.items() if not k.endswith("-fallback")))
            yield Modes(nodes, proxies, [proxy_port])
        finally:
            stop_all(nodes)
            for hp in proxies.values():
                hp.stop()


def _logs(m: Modes) -> str:
    return "\n".join(n.log() for n in m.nodes)


def _serial(pem: Path) -> int:
    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


def _p7_to_pem(tmp: Path, b64: bytes, name: str) -> Path:
    (tmp / f"{name}.b64").write_bytes(b64)
    out = tmp / f"{name}.pem"
    run(["sh", "-c", f"openssl base64 -d -A -in {tmp / (name + '.b64')} | openssl pkcs7 -inform DER -print_certs "
                     f"-out {out}"])
    return out


@pytest.mark.parametrize("mode", MODES)
def test_curl_openssl_enroll_and_reenroll(modes: Modes, mode: str, tmp_path: Path) -> None:
    """curl: /cacerts, simpleenroll with Basic, simplereenroll with the client
    certificate it got (certificate authentication through the proxy)."""
    url, ca = modes.url(mode) + "/.well-known/est", str(modes.ca_pem)
    cacerts = run(["curl", "-sf", "--cacert", ca, f"{url}/cacerts"]).stdout
    assert "BEGIN CERTIFICATE" in _p7_to_pem(tmp_path, cacerts, "cacerts").read_text()
    key = tmp_path / "k.pem"
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(key), "-subj", f"/CN=curl-{mode}", "-outform", "DER", "-out", str(tmp_path / "r.der")])
    (tmp_path / "r.b64").write_bytes(base64.b64encode((tmp_path / "r.der").read_bytes()))
    body = run(["curl", "-sf", "--cacert", ca, "-u", f"{USER}:{PASSWORD}", "-H", "Content-Type: application/pkcs10",
                "--data-binary", f"@{tmp_path / 'r.b64'}", f"{url}/simpleenroll"]).stdout
    cert = _p7_to_pem(tmp_path, body, "cert")
    body2 = run(["curl", "-sf", "--cacert", ca, "--cert", str(cert), "--key", str(key), "-H",
                 "Content-Type: application/pkcs10", "--data-binary", f"@{tmp_path / 'r.b64'}",
                 f"{url}/simplereenroll"]).stdout
    cert2 = _p7_to_pem(tmp_path, body2, "cert2")
    assert _serial(cert2) != _serial(cert)
    assert f"cert:CN=curl-{mode} simplereenroll - 200" in _logs(modes)


@pytest.mark.parametrize("mode", MODES)
def test_strongswan_pki_enroll_and_reenroll_tls12(modes: Modes, mode: str, tmp_path: Path) -> None:
    """strongSwan 5.9.8's pki (curl fetcher, TLS 1.2): --est with a password, then with its certificate."""
    key = tmp_path / "sw.key"
    key.write_bytes(run(["pki", "--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"]).stdout)
    csr = tmp_path / "sw.csr"
    csr.write_bytes(run(["pki", "--req", "--in", str(key), "--type", "priv", "--dn", f"CN=sw-{mode}",
                         "--outform", "pem"]).stdout)
    common = ["pki", "--est", "--url", modes.url(mode), "--cacert", str(modes.ca_pem), "--in", str(csr),
              "--outform", "pem"]
    cert = tmp_path / "sw.pem"
    cert.write_bytes(run([*common, "--userpass", f"{USER}:{PASSWORD}"], timeout=60).stdout)
    cert2 = tmp_path / "sw2.pem"
    cert2.write_bytes(run([*common, "--cert", str(cert), "--key", str(key)], timeout=60).stdout)
    assert _serial(cert2) != _serial(cert)
    assert f"cert:CN=sw-{mode} simplereenroll - 200" in _logs(modes)


@pytest.mark.parametrize("mode", MODES)
def test_estclient_linked_enroll_then_reenroll(modes: Modes, mode: str, tmp_path: Path) -> None:
    """estclient --pop on a label that requires linking: the CSR carries the
    tls-unique of the client's connection to HAProxy, which the node sees
    itself (passthrough) or from the proxy's header (terminate)."""
    base = ["--server", modes.url(mode), "--trust", str(modes.ca_pem), "--label", "linked"]
    k, c = tmp_path / "k.pem", tmp_path / "c.pem"
    run([ESTCLIENT, "enroll", *base, "--user", USER, "--pop", "--cn", f"linked-{mode}", "--key-out", str(k),
         "--cert-out", str(c)], env={"ESTCLIENT_PASSWORD": PASSWORD})
    run([ESTCLIENT, "reenroll", *base, "--pop", "--cert", str(c), "--key", str(k), "--key-out",
         str(tmp_path / "k2.pem"), "--cert-out", str(tmp_path / "c2.pem")])
    assert _serial(tmp_path / "c2.pem") != _serial(c)
    # Unlinked, the same label refuses (the linking is checked, not assumed).
    p = run([ESTCLIENT, "enroll", *base, "--user", USER, "--no-pop", "--cn", f"unlinked-{mode}", "--key-out",
             str(tmp_path / "k3.pem"), "--cert-out", str(tmp_path / "c3.pem")], env={"ESTCLIENT_PASSWORD": PASSWORD},
            check=False)
    assert p.returncode != 0 and b"link" in p.stderr.lower(), p.stderr


def _post(port: int, path: str, headers: dict[str, str], *, tls_ctx: ssl.SSLContext | None = None,
          source: str = "127.0.0.1") -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if tls_ctx is not None:
        conn = http.client.HTTPSConnection("localhost", port, context=tls_ctx, timeout=10,
                                           source_address=(source, 0))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    body = base64.b64encode(build_csr(generate_key("ec:P-256"), cn="forged")) + b"\n"
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/pkcs10", **headers})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_forwarded_headers_are_trusted_only_on_the_proxy_listener_from_trusted_proxies(modes: Modes) -> None:
    """A client's own X-Estkit-* headers name nobody: HAProxy drops them, the
    public TLS listener never reads them, and the proxy listener answers only
    trusted proxies."""
    cert_der = x509.load_pem_x509_certificate((modes.nodes[0].dir / "tls/server.pem").read_bytes()).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)
    forged = {"X-Estkit-Client-Cert": base64.b64encode(cert_der).decode(), "X-Estkit-Tls-Version": "TLSv1.2",
              "X-Estkit-Tls-Unique": "AAAA"}
    ctx = ssl.create_default_context(cafile=str(modes.ca_pem))
    path = "/.well-known/est/simplereenroll"
    # Through the TLS-terminating HAProxy: stripped, so no certificate: 401.
    assert _post(modes.proxies["terminate"].port, path, forged, tls_ctx=ctx)[0] == 401
    # Straight to a node's public TLS listener (a direct client, 127.0.0.2): ignored there.
    assert _post(modes.nodes[0].port, path, forged, tls_ctx=ctx, source="127.0.0.2")[0] == 401
    # Straight to the proxy listener from an address that is not a trusted proxy: 403.
    status, body = _post(modes.proxy_ports[0], path, forged, source="127.0.0.2")
    assert status == 403 and b"server.trusted_proxies" in body
    # From a trusted address the listener believes the proxy, but the certificate is
    # then checked like any other: the nodes' TLS server certificate is no client's.
    status, _ = _post(modes.proxy_ports[0], path, forged)
    assert status in (401, 403)
    with socket.create_connection(("127.0.0.1", modes.proxy_ports[0])):
        pass  # still listening


@pytest.mark.parametrize("mode", MODES)
def test_access_log_names_the_real_client(modes: Modes, mode: str) -> None:
    ctx = ssl.create_default_context(cafile=str(modes.ca_pem))
    status, _ = _post(modes.proxies[mode].port, "/.well-known/est/simpleenroll", {"Authorization": basic(USER, PASSWORD)},
                      tls_ctx=ctx, source="127.0.0.9")
    assert status == 200
    assert "127.0.0.9:" in _logs(modes)
