"""The server renews its own TLS certificate from its CA before it expires
(issue 13): the same names and revocation URLs, a new key (mode 0600), the
chain kept, recorded in the store once however many workers look, loaded by
every worker without dropping an open connection; a certificate from another
CA is left to the operator, who is told."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from support import ServerProcess, estkit, init_server_dir, read_config, require_tool, run, write_config
from test_sighup import _get, _peer_serial

from estkit.ca.create import make_tls_certificate
from estkit.ca.server_cert import ServerCertificate
from estkit.ca.signer import KeySigner, load_signer, write_private_key
from estkit.cli.common import config_for
from estkit.cli.wiring import build_authority, build_store
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # estkit init and serve: left out of `make test-fast`

NAMES = ["localhost", "127.0.0.1", "::1"]


def _replace_tls(d: Path, days: int, *, names: list[str] = NAMES, foreign: bool = False) -> x509.Certificate:
    """Write a TLS certificate valid ``days`` (from this estkit's CA, or a self-signed foreign one)."""
    key = generate_key("ec:P-256")
    if foreign:
        other = generate_key("ec:P-256")
        issuer = x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")])) \
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")])) \
            .public_key(other.public_key()).serial_number(1).not_valid_before(datetime.now(UTC)) \
            .not_valid_after(datetime.now(UTC) + timedelta(days=3650)).sign(other, hashes.SHA256())
        cert = make_tls_certificate(key, issuer, KeySigner(other), names, days=days)
        chain = b""
    else:
        ca = x509.load_pem_x509_certificate((d / "ca" / "root.pem").read_bytes())
        cert = make_tls_certificate(key, ca, load_signer(d / "ca" / "root.key", None), names, days=days,
                                    crl_url="http://pki.example/crl/default.crl", ocsp_url="http://pki.example/ocsp")
        chain = ca.public_bytes(serialization.Encoding.PEM)  # a chain after the leaf, to be kept
    (d / "tls" / "server.key.tmp").unlink(missing_ok=True)
    write_private_key(d / "tls" / "server.key.tmp", key)
    os.replace(d / "tls" / "server.key.tmp", d / "tls" / "server.key")
    (d / "tls" / "server.pem.tmp").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + chain)
    os.replace(d / "tls" / "server.pem.tmp", d / "tls" / "server.pem")
    return cert


def _renewer(d: Path, clock_days: float) -> ServerCertificate:
    cfg = config_for(str(d))
    ca = build_authority(cfg, build_store(cfg))
    now = datetime.now(UTC) + timedelta(days=clock_days)
    return ServerCertificate(ca, cfg.path(cfg.server.tls_cert), cfg.path(cfg.server.tls_key),
                             renew_before=timedelta(days=30), clock=lambda: now)


def _recorded(d: Path) -> list[dict[str, str]]:
    out = estkit("certs", "list", "--dir", str(d), "--requester", "estkit serve", "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_ok_due_certificate_is_renewed_with_its_names_urls_and_chain(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "d")
    old = _replace_tls(d, days=40)
    renewer = _renewer(d, clock_days=0)
    renewer.refresh()  # 40 days left, renewing at 30: nothing happens
    assert renewer.current.serial_number == old.serial_number and _recorded(d) == []
    renewer = _renewer(d, clock_days=15)  # 25 days left: due
    seen: list[int] = []
    renewer.on_change = lambda cert: seen.append(cert.serial_number)
    renewer.refresh()
    new = x509.load_pem_x509_certificates((d / "tls" / "server.pem").read_bytes())
    assert new[0].serial_number != old.serial_number and seen == [new[0].serial_number]
    assert new[0].subject == old.subject
    assert new[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for ext in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess, x509.ExtendedKeyUsage):
        assert new[0].extensions.get_extension_for_class(ext).value == old.extensions.get_extension_for_class(ext).value
    assert new[0].not_valid_after_utc > datetime.now(UTC) + timedelta(days=800)
    assert [c.subject for c in new[1:]] == [new[0].issuer]  # the chain after the leaf is kept
    key = serialization.load_pem_private_key((d / "tls" / "server.key").read_bytes(), None)
    assert key.public_key() == new[0].public_key()
    assert stat.S_IMODE((d / "tls" / "server.key").stat().st_mode) == 0o600
    require_tool("openssl")
    at = int((datetime.now(UTC) + timedelta(days=15, minutes=1)).timestamp())  # the renewer's clock
    run(["openssl", "verify", "-attime", str(at), "-CAfile", str(d / "ca.pem"), str(d / "tls" / "server.pem")])
    rows = _recorded(d)
    assert [int(r["serial"], 16) for r in rows] == [new[0].serial_number], rows
    renewer.refresh()  # renewed: not due again
    assert len(_recorded(d)) == 1


@pytest.mark.parametrize("case", ["foreign-ca", "renewal-off"])
def test_fail_not_ours_to_renew(tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    d = init_server_dir(tmp_path / "d")
    old = _replace_tls(d, days=10, foreign=case == "foreign-ca")
    renewer = _renewer(d, clock_days=0)
    if case == "renewal-off":
        renewer.renew_before = timedelta(0)
    with caplog.at_level(logging.WARNING, logger="estkit"):
        renewer.refresh()
        renewer.refresh()
    assert x509.load_pem_x509_certificates((d / "tls" / "server.pem").read_bytes())[0] == old
    assert _recorded(d) == []
    warned = [r.getMessage() for r in caplog.records if "renew it yourself" in r.getMessage()]
    assert len(warned) == (1 if case == "foreign-ca" else 0), warned  # said once, not at every check


def test_ok_workers_renew_once_and_all_serve_it_keeping_open_connections(tmp_path: Path) -> None:
    """Two workers check every second; the certificate on disk becomes due while
    they serve (an operator's short one): one renews, both load it."""
    d = init_server_dir(tmp_path / "d")
    doc = read_config(d)
    doc["server"].update(tls_renew_before_days=3, tls_renew_check_seconds=1)
    write_config(d, doc)
    first = _replace_tls(d, days=5)  # not due at the start
    srv = ServerProcess(d, workers=2).start()
    try:
        assert _peer_serial(srv) == first.serial_number
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        kept = srv.ssl_context().wrap_socket(raw, server_hostname="localhost")
        assert _get(kept).endswith(b"200 OK")
        short = _replace_tls(d, days=2)  # due: the workers load it, then one renews it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _peer_serial(srv) in (first.serial_number, short.serial_number):
            time.sleep(0.1)
        renewed = x509.load_pem_x509_certificates((d / "tls" / "server.pem").read_bytes())[0]
        assert renewed.serial_number not in (first.serial_number, short.serial_number), srv.log()
        deadline = time.monotonic() + 5  # the other worker loads it at its next check
        while time.monotonic() < deadline and {_peer_serial(srv) for _ in range(8)} != {renewed.serial_number}:
            time.sleep(0.2)
        assert {_peer_serial(srv) for _ in range(12)} == {renewed.serial_number}
        assert _get(kept).endswith(b"200 OK")  # the open connection was not dropped
        kept.close()
        assert [int(r["serial"], 16) for r in _recorded(d)] == [renewed.serial_number]  # renewed once
        assert srv.log().count("renewed the TLS certificate") == 1
    finally:
        assert srv.stop() == 0, srv.log()
