"""strongSwan's `pki --estca` / `pki --est` (Debian strongswan-pki 5.9.8 + curl fetcher) against estkit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ServerProcess, require_tool, run, server

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tool("pki", "openssl")

    def configure(doc: dict[str, Any]) -> None:
        doc["labels"]["routers"] = {"ca": "default", "validity_days": 30, "extended_key_usage": ["serverAuth", "ipsecIKE"]}
    with server(tmp_path_factory.mktemp("sw") / "data", users={"router": "r0uter-pw"}, configure=configure,
                init_args=("--intermediate",)) as s:
        yield s


def pki(*args: str, check: bool = True) -> Any:
    return run(["pki", *args], check=check, timeout=60)


def _url(srv: ServerProcess) -> str:
    return f"https://localhost:{srv.port}"


def _req(tmp: Path, name: str, cn: str, san: str, key: Path | None = None) -> tuple[Path, Path]:
    key = key or tmp / f"{name}.key"
    if not key.exists():
        key.write_bytes(pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem").stdout)
    csr = tmp / f"{name}.csr"
    csr.write_bytes(pki("--req", "--in", str(key), "--type", "priv", "--dn", f"CN={cn}", "--san", san,
                        "--outform", "pem").stdout)
    return key, csr


def _verify(srv: ServerProcess, tmp: Path, cert: Path) -> str:
    chain = tmp / "chain.pem"
    run(["sh", "-c", f"curl -sf --cacert {srv.ca_pem} {srv.url('cacerts')} | openssl base64 -d -A "
                     f"| openssl pkcs7 -inform DER -print_certs -out {chain}"])
    out = run(["openssl", "verify", "-CAfile", str(srv.ca_pem), "-untrusted", str(chain), str(cert)])
    assert b": OK" in out.stdout
    return run(["openssl", "x509", "-in", str(cert), "-noout", "-text"]).stdout.decode()


def test_ok_estca(srv: ServerProcess, tmp_path: Path) -> None:
    p = pki("--estca", "--url", _url(srv), "--cacert", str(srv.ca_pem), "--caout", str(tmp_path / "ca"),
            "--outform", "pem")
    files = sorted(tmp_path.glob("ca*"))
    assert files, p.stderr
    text = "".join(run(["openssl", "x509", "-in", str(f), "-noout", "-subject"]).stdout.decode() for f in files)
    assert "estkit Root CA" in text and "estkit Issuing CA" in text


def test_ok_est_userpass_then_reenroll_with_cert(srv: ServerProcess, tmp_path: Path) -> None:
    key, csr = _req(tmp_path, "gw", "gw1.example.com", "gw1.example.com")
    cert = tmp_path / "gw.pem"
    cert.write_bytes(pki("--est", "--url", _url(srv), "--cacert", str(srv.ca_pem), "--in", str(csr),
                         "--userpass", "router:r0uter-pw", "--outform", "pem").stdout)
    text = _verify(srv, tmp_path, cert)
    assert "CN = gw1.example.com" in text and "DNS:gw1.example.com" in text
    # simplereenroll: authenticated by the certificate being renewed (same key: renew).
    _, csr2 = _req(tmp_path, "gw2", "gw1.example.com", "gw1.example.com", key=key)
    cert2 = tmp_path / "gw-renewed.pem"
    cert2.write_bytes(pki("--est", "--url", _url(srv), "--cacert", str(srv.ca_pem), "--in", str(csr2),
                          "--cert", str(cert), "--key", str(key), "--outform", "pem").stdout)
    _verify(srv, tmp_path, cert2)
    s1 = run(["openssl", "x509", "-in", str(cert), "-noout", "-serial"]).stdout
    s2 = run(["openssl", "x509", "-in", str(cert2), "-noout", "-serial"]).stdout
    assert s1 != s2
    assert "simplereenroll" in srv.log() and "cert:CN=gw1.example.com simplereenroll - 200" in srv.log()


def test_ok_est_with_label(srv: ServerProcess, tmp_path: Path) -> None:
    _, csr = _req(tmp_path, "lb", "vpn.example.com", "vpn.example.com")
    cert = tmp_path / "lb.pem"
    # strongSwan 5.9.8 has no --label: it appends /.well-known/est/<op> to --url, and estkit
    # serves /<label>/.well-known/est/<op> as an alias of /.well-known/est/<label>/<op>.
    cert.write_bytes(pki("--est", "--url", _url(srv) + "/routers", "--cacert", str(srv.ca_pem),
                         "--in", str(csr), "--userpass", "router:r0uter-pw", "--outform", "pem").stdout)
    text = _verify(srv, tmp_path, cert)
    assert "TLS Web Server Authentication" in text
    assert "- simpleenroll routers 200" not in srv.log()  # identity is logged, not '-'
    assert "user:router simpleenroll routers 200" in srv.log()


def test_fail_est_wrong_password(srv: ServerProcess, tmp_path: Path) -> None:
    _, csr = _req(tmp_path, "bad", "bad.example.com", "bad.example.com")
    p = pki("--est", "--url", _url(srv), "--cacert", str(srv.ca_pem), "--in", str(csr),
            "--userpass", "router:nope", "--outform", "pem", check=False)
    err = p.stderr.decode(errors="replace")
    # The refusal is the server's 401 after a completed TLS handshake, not a TLS or connection failure.
    assert p.returncode != 0 and not p.stdout, err
    assert "EST request failed: HTTP 401" in err and "negotiated TLS" in err, err
    assert "TLS connection to EST server was not established" not in err, err
    assert " simpleenroll - 401 " in srv.log()  # the server saw and refused the credentials
