"""The OCSP responder (RFC 6960) end to end: a real ``estkit serve`` with its
plain-HTTP OCSP listener, asked by ``openssl ocsp`` (nonce, verification
against the CA) through the URL in the issued certificate's AIA; revocation by
``estkit revoke`` seen at once; unknown and unauthorized issuers; malformed
requests; the GET form; the CA key as signer on a listener shared with the
CRL; two workers; the delegated certificate's renewal; ``estkit init --public-url``."""

from __future__ import annotations

import base64
import email.utils
import http.client
import os
import signal
import socket
import stat
import time
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from support import ServerProcess, enroll, estkit, free_port, init_server_dir, read_config, require_tool, run, server

from estkit.ca.create import make_ca_certificate, make_tls_certificate
from estkit.ca.signer import KeySigner
from estkit.protocol import constants as c
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW = "ocsp-user", "ocsp-pw-1"


def _ocsp_on(port: int) -> Any:
    def configure(doc: dict[str, Any]) -> None:
        doc["server"]["ocsp_listen"] = f"127.0.0.1:{port}"
        doc["labels"]["default"]["ocsp_url"] = f"http://127.0.0.1:{port}/ocsp"
    return configure


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("ocsp") / "d"
    with server(d, users={USER: PW}, init_args=("--crl-listen", f"127.0.0.1:{free_port()}"),
                configure=_ocsp_on(free_port()), workers=2) as s:
        _wait_port(_ocsp_port(s))
        yield s


def _ocsp_port(srv: ServerProcess) -> int:
    return int(srv.config()["server"]["ocsp_listen"].rsplit(":", 1)[1])


def _wait_port(port: int) -> None:
    """The plain-HTTP sites start right after the EST site in each worker: allow them a moment."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _enroll(srv: ServerProcess, tmp: Path, cn: str) -> tuple[Path, x509.Certificate]:
    e = enroll(srv, tmp, cn, user=USER, password=PW)
    return e.cert_path, e.cert


def _openssl_ocsp(issuer: Path, cafile: Path, url: str, *target: str, check: bool = True) -> tuple[str, str]:
    """``openssl ocsp`` (a nonce by default); (stdout, stderr)."""
    require_tool("openssl")
    out = run(["openssl", "ocsp", "-issuer", str(issuer), *target, "-url", url, "-CAfile", str(cafile),
               "-resp_text"], check=check)
    return out.stdout.decode(), out.stderr.decode()


def _post(port: int, body: bytes, content_type: str = c.CT_OCSP_REQUEST) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/ocsp", body=body, headers={"Content-Type": content_type})
    r = conn.getresponse()
    out = r.status, r.headers.get("Content-Type", ""), r.read()
    conn.close()
    return out


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    out = r.status, r.headers.get("Content-Type", ""), r.read()
    conn.close()
    return out


def _request_der(srv: ServerProcess, cert_pem: Path, tmp: Path, *extra: str) -> bytes:
    require_tool("openssl")
    run(["openssl", "ocsp", "-issuer", str(srv.ca_pem), "-cert", str(cert_pem), *extra,
         "-reqout", str(tmp / "req.der")])
    return (tmp / "req.der").read_bytes()


def test_ok_good_then_revoked_via_the_certificates_aia(srv: ServerProcess, tmp_path: Path) -> None:
    cp, cert = _enroll(srv, tmp_path, "ocsp-leaf")
    # The URL comes from the certificate itself (AIA id-ad-ocsp, RFC 5280 §4.2.2.1).
    url = run(["openssl", "x509", "-in", str(cp), "-noout", "-ocsp_uri"]).stdout.decode().strip()
    assert url == f"http://127.0.0.1:{_ocsp_port(srv)}/ocsp"
    run(["openssl", "verify", "-CAfile", str(srv.ca_pem), str(cp)])
    out, err = _openssl_ocsp(srv.ca_pem, srv.ca_pem, url, "-cert", str(cp))
    assert f"{cp}: good" in out and "Response verify OK" in err, out + err
    assert "OCSP Nonce" in out and "WARNING" not in err  # echoed, and openssl checked it matches

    estkit("revoke", format(cert.serial_number, "X"), "--dir", str(srv.dir), "--reason", "keyCompromise")
    out, err = _openssl_ocsp(srv.ca_pem, srv.ca_pem, url, "-cert", str(cp))
    assert f"{cp}: revoked" in out and "Response verify OK" in err, out + err
    assert "Reason: keyCompromise" in out and "Revocation Time:" in out


def _foreign(tmp: Path, subject: x509.Name, serial: int) -> tuple[Path, Path]:
    """A CA that is not ours (maybe with our CA's name) and a leaf of it with a serial
    our CA did issue: only the issuer key hash tells them apart (RFC 6960 §4.1.1)."""
    key = generate_key("ec:P-256")
    ca = make_ca_certificate(subject, key.public_key(), KeySigner(key), path_length=0)
    leaf = make_tls_certificate(generate_key("ec:P-256"), ca, KeySigner(key), ["foreign.example"])
    leaf = KeySigner(key).sign_certificate(x509.CertificateBuilder(
        issuer_name=leaf.issuer, subject_name=leaf.subject, public_key=leaf.public_key(), serial_number=serial,
        not_valid_before=leaf.not_valid_before_utc, not_valid_after=leaf.not_valid_after_utc,
        extensions=list(leaf.extensions)))
    (tmp / "foreign-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "foreign-leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return tmp / "foreign-ca.pem", tmp / "foreign-leaf.pem"


@pytest.mark.parametrize("case,expected", [
    ("made-up-serial", "0x7F1234567890ABCDEF: unknown"),
    ("foreign-ca-same-name", "foreign-leaf.pem: unknown"),
    ("foreign-ca-other-name", "Responder Error: unauthorized"),
], ids=["fail/made-up-serial", "fail/foreign-ca-same-name", "fail/foreign-ca-other-name"])
def test_unknown_and_unauthorized(srv: ServerProcess, tmp_path: Path, case: str, expected: str) -> None:
    url = f"http://127.0.0.1:{_ocsp_port(srv)}/ocsp"
    if case == "made-up-serial":
        out, err = _openssl_ocsp(srv.ca_pem, srv.ca_pem, url, "-serial", "0x7F1234567890ABCDEF")
        assert "Response verify OK" in err
    else:
        ours = x509.load_pem_x509_certificate(srv.ca_pem.read_bytes()).subject
        subject = ours if case == "foreign-ca-same-name" else x509.Name.from_rfc4514_string("CN=Someone Else CA")
        _cp, ours_issued = _enroll(srv, tmp_path, "ocsp-same-serial")
        ca, leaf = _foreign(tmp_path, subject, ours_issued.serial_number)
        # Signed by our responder for a CertID naming another key: openssl's verification may
        # object; the status is what is checked here.
        out, err = _openssl_ocsp(ca, srv.ca_pem, url, "-cert", str(leaf), check=False)
    assert expected in out + err, out + err


@pytest.mark.parametrize("body,content_type,status", [
    (b"garbage", c.CT_OCSP_REQUEST, 200),
    (b"", c.CT_OCSP_REQUEST, 200),
    ("truncated", c.CT_OCSP_REQUEST, 200),
    ("two-requests", c.CT_OCSP_REQUEST, 200),
    ("valid", "application/octet-stream", 415),
    (b"\x30" * 20000, c.CT_OCSP_REQUEST, 413),
], ids=["fail/garbage", "fail/empty", "fail/truncated", "fail/two-requests-in-one", "fail/wrong-media-type",
        "fail/too-large"])
def test_malformed_requests(srv: ServerProcess, tmp_path: Path, body: Any, content_type: str,
                            status: int) -> None:
    cp, _cert = _enroll(srv, tmp_path, "ocsp-malformed")
    if body == "truncated":
        body = _request_der(srv, cp, tmp_path)[:-7]
    elif body == "two-requests":  # cryptography reads one request per OCSPRequest
        body = _request_der(srv, cp, tmp_path, "-serial", "0x01")
    elif body == "valid":
        body = _request_der(srv, cp, tmp_path)
    got, ctype, data = _post(_ocsp_port(srv), body, content_type)
    assert got == status, data
    if status == 200:  # RFC 6960 §2.3: an OCSP error status, not an HTTP one
        assert ctype == c.CT_OCSP_RESPONSE
        assert ocsp.load_der_ocsp_response(data).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    else:
        assert ctype.startswith("text/plain") and data.count(b"\n") == 1


@pytest.mark.parametrize("form", ["ok/get", "fail/get-bad-base64", "fail/get-empty"])
def test_get_form(srv: ServerProcess, tmp_path: Path, form: str) -> None:
    cp, _cert = _enroll(srv, tmp_path, "ocsp-get")
    der = _request_der(srv, cp, tmp_path)
    # RFC 6960 Appendix A.1: the URL-encoded base64 of the DER request after the responder's URL.
    path = {"ok/get": "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe=""),
            "fail/get-bad-base64": "/ocsp/%%%not-base64!", "fail/get-empty": "/ocsp/"}[form]
    status, ctype, data = _get(_ocsp_port(srv), path)
    assert status == 200 and ctype == c.CT_OCSP_RESPONSE
    resp = ocsp.load_der_ocsp_response(data)
    if form != "ok/get":
        assert resp.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        return
    (tmp_path / "resp.der").write_bytes(data)
    out = run(["openssl", "ocsp", "-respin", str(tmp_path / "resp.der"), "-issuer", str(srv.ca_pem),
               "-cert", str(cp), "-CAfile", str(srv.ca_pem), "-no_nonce"])
    assert f"{cp}: good" in out.stdout.decode() and "Response verify OK" in out.stderr.decode()


@pytest.mark.parametrize("case", ["ok/get-without-nonce", "ok/get-with-nonce", "ok/post", "fail/get-malformed"])
def test_http_caching(srv: ServerProcess, tmp_path: Path, case: str) -> None:
    """RFC 5019 §6.2: a GET answer without a nonce may be cached until nextUpdate;
    one with a nonce, or an error, never; a POST answer carries no cache headers."""
    cp, _cert = _enroll(srv, tmp_path, "ocsp-cache")
    der = _request_der(srv, cp, tmp_path, *(["-no_nonce"] if case != "ok/get-with-nonce" else []))
    conn = http.client.HTTPConnection("127.0.0.1", _ocsp_port(srv), timeout=30)
    if case == "ok/post":
        conn.request("POST", "/ocsp", body=der, headers={"Content-Type": c.CT_OCSP_REQUEST})
    else:
        b64 = base64.b64encode(der).decode() if case != "fail/get-malformed" else "AAAA"
        conn.request("GET", "/ocsp/" + urllib.parse.quote(b64, safe=""))
    r = conn.getresponse()
    body, headers = r.read(), r.headers
    conn.close()
    assert r.status == 200
    if case == "ok/post":
        assert headers.get("Cache-Control") is None and headers.get("Expires") is None
    elif case == "ok/get-without-nonce":
        resp = ocsp.load_der_ocsp_response(body)
        assert resp.next_update_utc is not None
        cc = headers["Cache-Control"]
        assert cc.endswith(", public, no-transform, must-revalidate"), cc
        max_age = int(cc.split(",")[0].removeprefix("max-age="))
        assert 3590 <= max_age <= 3600  # ocsp_next_update_seconds, the default
        assert email.utils.parsedate_to_datetime(headers["Expires"]) == resp.next_update_utc.replace(microsecond=0)
        assert email.utils.parsedate_to_datetime(headers["Last-Modified"]) == \
            resp.this_update_utc.replace(microsecond=0)
        assert headers["ETag"].startswith('"')
    else:
        assert headers["Cache-Control"] == "no-store" and headers.get("Expires") is None


def test_ok_delegated_responder_certificate(srv: ServerProcess, tmp_path: Path) -> None:
    pem, key = srv.dir / "ocsp/default.pem", srv.dir / "ocsp/default.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    cert.extensions.get_extension_for_class(x509.OCSPNoCheck)  # RFC 6960 §4.2.2.2.1
    text = run(["openssl", "x509", "-in", str(pem), "-noout", "-text"]).stdout.decode()
    assert "OCSP Signing" in text and "OCSP No Check" in text
    # The response carries it and is signed by it.
    cp, _c = _enroll(srv, tmp_path, "ocsp-delegated")
    _s, _t, data = _post(_ocsp_port(srv), _request_der(srv, cp, tmp_path))
    resp = ocsp.load_der_ocsp_response(data)
    assert resp.certificates == [cert] and resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        cert.public_key()).digest
    # Recorded in the store like every certificate the CA signs.
    listed = estkit("certs", "list", "--dir", str(srv.dir)).stdout.decode()
    assert format(cert.serial_number, "x") in listed.lower()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_ok_two_workers_both_answer(srv: ServerProcess, tmp_path: Path) -> None:
    """Each worker loads the delegated signer the parent created: with one worker
    stopped, the other answers every request, and the other way round."""
    assert srv.proc is not None
    workers = _children(srv.proc.pid)
    assert len(workers) == 2
    cp, _c = _enroll(srv, tmp_path, "ocsp-workers")
    der = _request_der(srv, cp, tmp_path)
    for stopped in workers:
        os.kill(stopped, signal.SIGSTOP)
        try:
            for _ in range(5):
                _s, _t, data = _post(_ocsp_port(srv), der)
                assert ocsp.load_der_ocsp_response(data).certificate_status == ocsp.OCSPCertStatus.GOOD
        finally:
            os.kill(stopped, signal.SIGCONT)
    # One responder certificate: the workers did not each issue their own.
    listed = estkit("certs", "list", "--dir", str(srv.dir)).stdout.decode()
    assert listed.count("OCSP Responder") == 1, listed


def test_ok_ca_signer_on_the_crl_listener(tmp_path: Path) -> None:
    """``ocsp_signer = "ca"``, and ``ocsp_listen`` equal to ``crl_listen``: one listener serves both."""
    port = free_port()

    def configure(doc: dict[str, Any]) -> None:
        doc["server"]["ocsp_listen"] = doc["server"]["crl_listen"]
        doc["server"]["ocsp_signer"] = "ca"
    with server(tmp_path / "d", init_args=("--crl-listen", f"127.0.0.1:{port}"), configure=configure) as s:
        _wait_port(port)
        leaf = tmp_path / "tls.pem"
        leaf.write_bytes(x509.load_pem_x509_certificates((s.dir / "tls/server.pem").read_bytes())[0]
                         .public_bytes(serialization.Encoding.PEM))
        out, err = _openssl_ocsp(s.ca_pem, s.ca_pem, f"http://127.0.0.1:{port}/ocsp", "-cert", str(leaf))
        assert f"{leaf}: good" in out and "Response verify OK" in err, out + err
        assert "OCSP Nonce" in out and "Certificate:" not in out  # no delegated certificate sent
        assert not (s.dir / "ocsp/default.key").exists()
        status, ctype, _d = _get(port, "/crl/default.crl")
        assert status == 200 and ctype == c.CT_PKIX_CRL


def test_delegated_certificate_renewal(tmp_path: Path) -> None:
    """Renewed with less than a third of its life left, kept before; a key file
    readable by others is refused."""
    from estkit.ca.ocsp_signer import ResponderKeys
    from estkit.cli.wiring import build_authority
    from estkit.config import load_config
    from estkit.ca.ports import utc_now
    init_server_dir(tmp_path / "d")
    ca = build_authority(load_config(tmp_path / "d"))
    now = [utc_now()]
    keys = ResponderKeys(ca, tmp_path / "d/ocsp", lifetime=timedelta(days=30), clock=lambda: now[0])
    first = keys.get("default").cert
    now[0] += timedelta(days=19)  # 11 days left of 30: kept
    keys.refresh()
    assert keys.get("default").cert == first
    now[0] += timedelta(days=2)  # 9 days left: renewed
    keys.refresh()
    second = keys.get("default").cert
    assert second.serial_number != first.serial_number and second.not_valid_after_utc > first.not_valid_after_utc
    # Another process (a worker) sees the new files on its next check.
    other = ResponderKeys(ca, tmp_path / "d/ocsp", clock=lambda: now[0])
    assert other.get("default").cert == second
    assert stat.S_IMODE((tmp_path / "d/ocsp/default.key").stat().st_mode) == 0o600
    os.chmod(tmp_path / "d/ocsp/default.key", 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        ResponderKeys(ca, tmp_path / "d/ocsp", clock=lambda: now[0]).refresh()
    ca.store.close()  # type: ignore[attr-defined]


def test_ok_init_public_url(tmp_path: Path) -> None:
    port = free_port()
    d = tmp_path / "d"
    init_server_dir(d, "--public-url", f"http://127.0.0.1:{port}")
    cfg = read_config(d)
    assert cfg["server"]["crl_listen"] == cfg["server"]["ocsp_listen"] == f"127.0.0.1:{port}"
    assert cfg["labels"]["default"]["crl_url"] == f"http://127.0.0.1:{port}/crl/default.crl"
    assert cfg["labels"]["default"]["ocsp_url"] == f"http://127.0.0.1:{port}/ocsp"
    leaf = tmp_path / "tls.pem"
    leaf.write_bytes(x509.load_pem_x509_certificates((d / "tls/server.pem").read_bytes())[0]
                     .public_bytes(serialization.Encoding.PEM))
    url = run(["openssl", "x509", "-in", str(leaf), "-noout", "-ocsp_uri"]).stdout.decode().strip()
    assert url == f"http://127.0.0.1:{port}/ocsp"
    with server(d):
        _wait_port(port)
        out, err = _openssl_ocsp(d / "ca.pem", d / "ca.pem", url, "-cert", str(leaf))
        assert f"{leaf}: good" in out and "Response verify OK" in err, out + err
        # The TLS certificate's own CRL Distribution Point, on the same listener.
        run(["openssl", "verify", "-crl_check", "-crl_download", "-CAfile", str(d / "ca.pem"), str(leaf)])


def test_ok_init_without_public_url_changes_nothing(tmp_path: Path) -> None:
    init_server_dir(tmp_path / "d")
    cfg = read_config(tmp_path / "d")
    assert cfg["server"]["crl_listen"] == "" and cfg["server"]["ocsp_listen"] == ""
    assert "crl_url" not in cfg["labels"]["default"] and "ocsp_url" not in cfg["labels"]["default"]
    tls = x509.load_pem_x509_certificates((tmp_path / "d/tls/server.pem").read_bytes())[0]
    with pytest.raises(x509.ExtensionNotFound):
        tls.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


@pytest.mark.parametrize("url", ["https://est.example", "http://est.example/path", "http://:8080",
                                 "http://est.example:99999", "est.example:8080"],
                         ids=["fail/https", "fail/path", "fail/no-host", "fail/bad-port", "fail/no-scheme"])
def test_init_public_url_refused(tmp_path: Path, url: str) -> None:
    out = estkit("init", "--dir", str(tmp_path / "d"), "--public-url", url, check=False)
    assert out.returncode != 0 and b"--public-url" in out.stderr and b"Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("key,value,message", [
    ("ocsp_listen", "nowhere", "'server.ocsp_listen' must be HOST:PORT"),
    ("ocsp_signer", "hsm", "'server.ocsp_signer' must be"),
    ("ocsp_next_update_seconds", 0, "'server.ocsp_next_update_seconds' must be positive"),
], ids=["fail/listen", "fail/signer", "fail/next-update"])
def test_config_refused(tmp_path: Path, key: str, value: Any, message: str) -> None:
    from estkit.config import ConfigError, load_config
    from support import write_config
    init_server_dir(tmp_path / "d")
    doc = read_config(tmp_path / "d")
    doc["server"][key] = value
    write_config(tmp_path / "d", doc)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "d")


def test_store_down_gets_try_later(tmp_path: Path) -> None:
    """RFC 6960 §2.3: with the store unreachable the responder says tryLater (no HTTP 500)."""
    from support import postgres_server
    port = free_port()
    pg = postgres_server()
    env = {"ESTKIT_STORE_URL": pg.__enter__()}
    stopped = False
    try:
        with server(tmp_path / "d", init_args=("--crl-listen", f"127.0.0.1:{free_port()}"),
                    configure=_ocsp_on(port), env=env) as s:
            _wait_port(port)
            leaf = tmp_path / "tls.pem"
            leaf.write_bytes(x509.load_pem_x509_certificates((s.dir / "tls/server.pem").read_bytes())[0]
                             .public_bytes(serialization.Encoding.PEM))
            der = _request_der(s, leaf, tmp_path)
            status, _t, data = _post(port, der)
            assert status == 200 and ocsp.load_der_ocsp_response(data).certificate_status == ocsp.OCSPCertStatus.GOOD
            pg.__exit__(None, None, None)
            stopped = True
            status, ctype, data = _post(port, der)
            assert status == 200 and ctype == c.CT_OCSP_RESPONSE, data
            assert ocsp.load_der_ocsp_response(data).response_status == ocsp.OCSPResponseStatus.TRY_LATER
    finally:
        if not stopped:
            pg.__exit__(None, None, None)
