"""``estkit revoke`` and the CRL end to end: a real server with its plain-HTTP
CRL listener, revocation from the command line while it runs, the revoked
certificate refused, ``openssl verify -crl_check -crl_download`` following the
certificate's own CRL Distribution Point; CRL numbers that persist and grow;
regeneration before nextUpdate."""

from __future__ import annotations

import base64
import time
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from support import ServerProcess, enroll, estkit, free_port, require_tool, run, server

from estkit.protocol import constants as c
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW = "rev-user", "rev-pw-1"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("rev") / "d"
    port = free_port()
    with server(d, users={USER: PW}, init_args=("--crl-listen", f"127.0.0.1:{port}")) as s:
        yield s


def _crl_base(srv: ServerProcess) -> str:
    return "http://" + srv.config()["server"]["crl_listen"]


def _enroll(srv: ServerProcess, tmp: Path, cn: str) -> tuple[Path, Path, x509.Certificate]:
    e = enroll(srv, tmp, cn, user=USER, password=PW)
    return e.cert_path, e.key_path, e.cert


def _reenroll_status(srv: ServerProcess, cp: Path, kp: Path, cn: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=srv.ssl_context(cp, kp), timeout=30)
    conn.request("POST", "/.well-known/est/simplereenroll",
                 body=base64.b64encode(build_csr(generate_key("ec:P-256"), cn=cn)),
                 headers={"Content-Type": c.CT_PKCS10})
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def _fetch_crl(srv: ServerProcess) -> x509.CertificateRevocationList:
    # The CRL site starts right after the EST site in the worker: allow it a moment.
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(_crl_base(srv) + "/crl/default.crl", timeout=10) as r:
                assert r.status == 200 and r.headers["Content-Type"] == c.CT_PKIX_CRL
                return x509.load_der_x509_crl(r.read())
        except urllib.error.URLError as exc:
            if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_ok_cli_revoke_refuses_and_openssl_follows_the_cdp(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("openssl")
    cp, kp, cert = _enroll(srv, tmp_path, "cli-revoked")
    ok_cp, _ok_kp, _ = _enroll(srv, tmp_path, "cli-valid")
    assert _reenroll_status(srv, cp, kp, "cli-revoked")[0] == 200  # works before revocation
    # openssl downloads the CRL from the certificate's own CRL Distribution Point.
    run(["openssl", "verify", "-crl_check", "-crl_download", "-CAfile", str(srv.ca_pem), str(cp)])
    before = _number(_fetch_crl(srv))

    out = estkit("revoke", format(cert.serial_number, "X"), "--dir", str(srv.dir), "--reason", "superseded")
    assert b"revoked" in out.stdout and b"superseded" in out.stdout

    status, body = _reenroll_status(srv, cp, kp, "cli-revoked")
    assert status == 403 and b"revoked" in body
    crl = _fetch_crl(srv)
    assert _number(crl) > before
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.superseded
    bad = run(["openssl", "verify", "-crl_check", "-crl_download", "-CAfile", str(srv.ca_pem), str(cp)], check=False)
    assert bad.returncode != 0 and b"certificate revoked" in bad.stdout + bad.stderr
    run(["openssl", "verify", "-crl_check", "-crl_download", "-CAfile", str(srv.ca_pem), str(ok_cp)])

    listed = estkit("certs", "list", "--revoked", "--dir", str(srv.dir)).stdout.decode()
    # serials as `openssl x509 -serial` prints them (upper case, whole bytes)
    assert format(cert.serial_number, "x") in listed.lower() and "revoked:superseded" in listed
    shown = estkit("crl", "show", "--dir", str(srv.dir)).stdout.decode()
    assert format(cert.serial_number, "x") in shown and f"CRL number {_number(crl)}" in shown


@pytest.mark.parametrize("args,message", [
    (["ffffffffffff"], "no certificate with serial ffffffffffff"),
    (["not-hex"], "not a hexadecimal serial"),
    (["01", "--reason", "sorry"], "unknown revocation reason"),
], ids=["fail/unknown-serial", "fail/bad-serial", "fail/bad-reason"])
def test_cli_revoke_refused(srv: ServerProcess, args: list[str], message: str) -> None:
    out = estkit("revoke", *args, "--dir", str(srv.dir), check=False)
    assert out.returncode != 0 and message.encode() in out.stderr
    assert b"Traceback" not in out.stderr


@pytest.mark.parametrize("path,status", [("/crl/nosuch.crl", 404), ("/crl/", 404), ("/other", 404)],
                         ids=["fail/unknown-ca", "fail/no-name", "fail/other-path"])
def test_crl_listener_refuses(srv: ServerProcess, path: str, status: int) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(_crl_base(srv) + path, timeout=10)
    assert err.value.code == status


def test_ok_crl_export_matches_served(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("openssl")
    estkit("crl", "export", "--dir", str(srv.dir), "--pem", "--out", str(tmp_path / "x.crl"))
    text = run(["openssl", "crl", "-in", str(tmp_path / "x.crl"), "-noout", "-text"]).stdout
    assert b"X509v3 CRL Number" in text and b"Next Update" in text
    assert x509.load_pem_x509_crl((tmp_path / "x.crl").read_bytes()) == _fetch_crl(srv)


def test_ok_crl_number_persists_across_restart(tmp_path: Path) -> None:
    port = free_port()
    d = tmp_path / "d"
    with server(d, init_args=("--crl-listen", f"127.0.0.1:{port}")) as s:
        first = _number(_fetch_crl(s))
    estkit("crl", "update", "--dir", str(d))
    with server(d) as s:
        assert _number(_fetch_crl(s)) > first


def test_ok_crl_regenerated_before_next_update(tmp_path: Path) -> None:
    """The periodic task's rule on a real store: a CRL within refresh_before of
    its nextUpdate is replaced by a new one with a larger number."""
    from estkit.ca.revocation import Revocation
    from estkit.cli.wiring import build_authority
    from estkit.config import load_config
    from support import init_server_dir
    init_server_dir(tmp_path / "d")
    ca = build_authority(load_config(tmp_path / "d"))
    now = [datetime.now(UTC)]
    rev = Revocation(ca, validity=timedelta(hours=24), refresh_before=timedelta(hours=8), clock=lambda: now[0])
    first = rev.current("default")
    now[0] += timedelta(hours=10)
    assert rev.current("default").number == first.number  # 14 h left: kept
    now[0] += timedelta(hours=7)
    second = rev.current("default")  # 7 h left: regenerated
    assert second.number == first.number + 1 and second.next_update > first.next_update
    crl = x509.load_der_x509_crl(second.der)
    assert crl.next_update_utc == second.next_update and crl.is_signature_valid(ca.cas["default"].cert.public_key())  # type: ignore[arg-type]
    ca.store.close()  # type: ignore[attr-defined]
