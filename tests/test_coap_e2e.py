"""EST-coaps (RFC 9148) end to end: a real ``estkit serve --coap-listen``,
driven by libcoap's ``coap-client-openssl`` (a third-party client) and by
estkit's own client, every certificate checked with ``openssl verify``."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption
from coap_support import (COAP_CLIENT, Device, RawCoap, coap_client, coap_server, coaps_url, manufacturer,
                          request_all)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from support import ApproveOnPending, VENV_BIN, ServerProcess, require_tool, run

from estkit.ca.create import make_tls_certificate
from estkit.ca.signer import load_signer
from estkit.client import EstClient
from estkit.client.dtls import DtlsConnection
from estkit.client.errors import NetworkError
from estkit.errors import BadRequest, Forbidden, Unauthorized
from estkit.protocol.coaps import decode_multipart_core
from estkit.protocol.csr import build_csr
from estkit.protocol.envelope import unwrap_server_key
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

EST = "/.well-known/est"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int, Device, Device, Device]]:
    d = tmp_path_factory.mktemp("coap")
    root, idevid, stranger, direct = manufacturer(d)

    def configure(doc: dict[str, Any]) -> None:
        doc["server"]["bootstrap_trust"] = [str(root)]
        base = doc["labels"]["default"]
        base["serverkeygen"] = True
        doc["labels"]["linked"] = {**base, "require_linking": True}
        doc["labels"]["held"] = {**base, "manual_approval": True, "pending_retry_after": 1}

    # Two workers: EST-coaps is served by worker 0 of a forked server (docs/architecture.md).
    with coap_server(d / "data", configure, init_args=("--intermediate",), workers=2) as (srv, port):
        yield srv, port, idevid, stranger, direct


def _verify(srv: ServerProcess, tmp: Path, cert: x509.Certificate, name: str) -> None:
    p = tmp / f"{name}.pem"
    p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    chain = srv.dir / "chain.pem"  # the issuing CA (init --intermediate), from /cacerts over HTTPS
    if not chain.exists():
        chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                   for c in EstClient(f"https://localhost:{srv.port}", trust=srv.ca_pem).cacerts()))
    out = run(["openssl", "verify", "-CAfile", str(srv.ca_pem), "-untrusted", str(chain), str(p)])
    assert out.stdout.strip().endswith(b"OK"), out.stdout


def _names(certs: list[x509.Certificate]) -> set[str]:
    return {c.subject.rfc4514_string() for c in certs}


def _client(env: Any, device: Device | None = None, **kw: Any) -> EstClient:
    srv, port = env[0], env[1]
    return EstClient(coaps_url(port), trust=srv.ca_pem, client_cert=device.client_cert if device else None, **kw)


def _save(tmp: Path, name: str, key: Any, cert: x509.Certificate) -> Device:
    cp, kp = tmp / f"{name}.pem", tmp / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return Device(cp, kp)


# -- libcoap's coap-client-openssl: a third-party client ------------------------------------------------


def test_ok_libcoap_bootstrap_enroll_reenroll_keygen(env: Any, tmp_path: Path) -> None:
    """RFC 9148 §4 with a manufacturer certificate in bootstrap trust: GET crts and
    att, POST sen block-wise (286), sren with the issued certificate, skg."""
    require_tool(COAP_CLIENT, "openssl")
    srv, port, idevid = env[0], env[1], env[4]  # libcoap sends no chain: an IDevID of the root
    base = f"coaps://127.0.0.1:{port}{EST}"
    ca = ["-R", str(srv.ca_pem)]
    crts = tmp_path / "crts.der"
    # -b 64: the chain comes back in 64-byte Block2 blocks (RFC 7959 §2.4).
    r = coap_client("-m", "get", *ca, "-b", "64", "-A", "281", "-o", str(crts), f"{base}/crts")
    assert r.returncode == 0, r.stderr
    chain = parse_certs_only(crts.read_bytes())
    assert _names(chain) == {"CN=estkit Root CA", "CN=estkit Issuing CA"}  # the whole chain (RFC 7030 §4.1.3)
    att = tmp_path / "att.der"
    assert coap_client("-m", "get", *ca, "-o", str(att), f"{base}/att").returncode == 0
    assert att.read_bytes()[:1] == b"\x30"  # a DER CsrAttrs, not base64

    key = generate_key("ec:P-256")
    csr = tmp_path / "sen.csr"
    csr.write_bytes(build_csr(key, cn="libcoap-dev"))
    sen = tmp_path / "sen.der"
    # -b 64: the CSR goes in 64-byte Block1 blocks, the answer comes in Block2 blocks (RFC 7959).
    r = coap_client("-m", "post", *ca, "-c", str(idevid.cert), "-j", str(idevid.key), "-b", "64", "-t", "286",
                    "-f", str(csr), "-o", str(sen), f"{base}/sen")
    assert r.returncode == 0 and sen.exists(), r.stderr
    (issued,) = parse_certs_only(sen.read_bytes())
    assert issued.public_key() == key.public_key()
    _verify(srv, tmp_path, issued, "sen")
    dev = _save(tmp_path, "ldevid", key, issued)

    sren = tmp_path / "sren.der"
    r = coap_client("-m", "post", *ca, "-c", str(dev.cert), "-j", str(dev.key), "-t", "286", "-A", "287",
                    "-f", str(csr), "-o", str(sren), f"{base}/sren")
    assert r.returncode == 0 and sren.exists(), r.stderr
    renewed = x509.load_der_x509_certificate(sren.read_bytes())  # 287: one DER certificate
    assert renewed.subject == issued.subject and renewed.serial_number != issued.serial_number
    _verify(srv, tmp_path, renewed, "sren")

    skg = tmp_path / "skg.cbor"
    r = coap_client("-m", "post", *ca, "-c", str(dev.cert), "-j", str(dev.key), "-t", "286",
                    "-f", str(csr), "-o", str(skg), f"{base}/skg")
    assert r.returncode == 0 and skg.exists(), r.stderr
    parts = dict(decode_multipart_core(skg.read_bytes()))
    assert set(parts) == {284, 281}, parts.keys()  # RFC 9148 §4.8: PKCS#8 key and certs-only
    server_key = serialization.load_der_private_key(parts[284], None)
    (kg_cert,) = parse_certs_only(parts[281])
    assert kg_cert.public_key() == server_key.public_key()
    _verify(srv, tmp_path, kg_cert, "skg")


def test_ok_libcoap_discovery(env: Any) -> None:
    """RFC 9148 §4.1: /.well-known/core lists the resources with rt and ct."""
    require_tool(COAP_CLIENT)
    srv, port = env[0], env[1]
    r = coap_client("-m", "get", "-R", str(srv.ca_pem), f"coaps://127.0.0.1:{port}/.well-known/core?rt=ace.est*")
    assert r.returncode == 0, r.stderr
    links = r.stdout.decode()
    for short, ct in (("crts", '"281 287"'), ("sen", '"281 287"'), ("sren", '"281 287"'), ("att", "285"),
                      ("skg", "62"), ("skc", "62")):
        assert f'<{EST}/{short}>;rt="ace.est.{short}";ct={ct}' in links, links


# -- estkit's client ---------------------------------------------------------------------------------------


def test_ok_estkit_client_every_operation(env: Any, tmp_path: Path) -> None:
    srv, idevid = env[0], env[2]
    anon = _client(env)
    assert _names(anon.cacerts()) == {"CN=estkit Root CA", "CN=estkit Issuing CA"}
    assert anon.csrattrs().oids()
    key, cert = _client(env, idevid).enroll(cn="lib-dev")  # bootstrap: the manufacturer certificate
    _verify(srv, tmp_path, cert, "enroll")
    dev = _save(tmp_path, "lib-dev", key, cert)
    key2, renewed = _client(env, dev).reenroll()
    assert renewed.subject == cert.subject and renewed.public_key() == key2.public_key()
    _verify(srv, tmp_path, renewed, "reenroll")
    dev2 = _save(tmp_path, "lib-dev2", key2, renewed)
    skey, scert = _client(env, dev2).serverkeygen(cn="lib-dev")
    assert scert.public_key() == skey.public_key()
    _verify(srv, tmp_path, scert, "serverkeygen")
    # encrypted to the client certificate (280 in the multipart-core), opened with its key
    ekey, ecert = _client(env, dev2).serverkeygen(cn="lib-dev", encrypt=True)
    assert ecert.public_key() == ekey.public_key()


def test_ok_estclient_cli(env: Any, tmp_path: Path) -> None:
    srv, port, idevid = env[0], env[1], env[2]
    common = ["--server", coaps_url(port), "--trust", str(srv.ca_pem)]
    out = tmp_path / "cli.pem"
    run([str(VENV_BIN / "estclient"), "enroll", *common, "--cert", str(idevid.cert), "--key", str(idevid.key), "--cn", "cli-dev",
         "--key-out", str(tmp_path / "cli.key"), "--cert-out", str(out)])
    _verify(srv, tmp_path, x509.load_pem_x509_certificate(out.read_bytes()), "cli")
    chain = run([str(VENV_BIN / "estclient"), "cacerts", *common]).stdout
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    # A credential directory, then `estclient renew` (cron's way) over EST-coaps with its own certificate.
    d = tmp_path / "cred"
    run([str(VENV_BIN / "estclient"), "enroll", *common, "--cert", str(idevid.cert), "--key", str(idevid.key),
         "--cn", "cron-dev", "--dir", str(d)])
    first = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    out = run([str(VENV_BIN / "estclient"), "renew", *common, "--dir", str(d), "--force"])
    assert b"renewed" in out.stdout
    renewed = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    assert renewed.serial_number != first.serial_number and renewed.subject == first.subject
    _verify(srv, tmp_path, renewed, "cron")


@pytest.mark.parametrize("label,link,error", [
    pytest.param("linked", True, None, id="ok/linked-label-dtls-tls-unique"),
    pytest.param(None, True, None, id="ok/linked-default-label"),
    pytest.param("linked", False, "linking is required", id="fail/required-but-absent"),
])
def test_linking_with_dtls_tls_unique(env: Any, label: str | None, link: bool, error: str | None) -> None:
    """RFC 9148 §3: proof-of-possession linking with the DTLS session's tls-unique."""
    client = EstClient(coaps_url(env[1]), trust=env[0].ca_pem, client_cert=env[2].client_cert, label=label)
    if error is None:
        _key, cert = client.enroll(cn=f"linked-{label}", link=link)
        assert cert.subject.rfc4514_string() == f"CN=linked-{label}"
    else:
        with pytest.raises(BadRequest, match=error):
            client.enroll(cn="unlinked", link=link)


def test_fail_linking_wrong_tls_unique(env: Any) -> None:
    srv, port, idevid = env[0], env[1], env[2]
    csr = build_csr(generate_key("ec:P-256"), cn="wrong-link", challenge_password="AAAAAAAAAAAAAAAA")
    with RawCoap(srv, port, idevid) as c:
        r = c.request(c.message(Code.POST, f"{EST}/sen", csr, content_format=286))
    assert r.code == Code.BAD_REQUEST and b"linking failed" in r.payload, (r, r.payload)


def test_pending_5_03_max_age_then_approved(env: Any) -> None:
    """RFC 9148 §5: manual approval is 5.03 with Max-Age; the client asks
    again and gets the certificate once an operator approved."""
    srv = env[0]
    on_pending = ApproveOnPending(srv.dir)
    waits, approvals = on_pending.waits, on_pending.approvals

    client = EstClient(coaps_url(env[1]), trust=srv.ca_pem, client_cert=env[2].client_cert, label="held",
                       pending_retries=20, on_pending=on_pending)
    _key, cert = client.enroll(cn="held-dev")
    approvals[0].join()
    assert waits and waits[0].retry_after == 1  # Max-Age
    assert cert.subject.rfc4514_string() == "CN=held-dev"


def test_fail_policy_refusal_is_4_03(env: Any, tmp_path: Path) -> None:
    """A certificate issued here asks only for its own names (docs/policy.md): 4.03 naming the rule."""
    key, cert = _client(env, env[2]).enroll(cn="own-name-dev")
    dev = _save(tmp_path, "own", key, cert)
    with pytest.raises(Forbidden, match="rule 'own-names'"):
        _client(env, dev).enroll(cn="someone-else")


def _forged(tmp: Path, srv: ServerProcess) -> Device:
    """A certificate naming our root as issuer, signed by another key."""
    root = x509.load_pem_x509_certificate(srv.ca_pem.read_bytes())
    fake_key = generate_key("ec:P-256")
    key = generate_key("ec:P-256")
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=forged"))
            .issuer_name(root.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .sign(fake_key, hashes.SHA256()))
    return _save(tmp, "forged", key, cert)


@pytest.mark.parametrize("which", ["foreign", "forged"], ids=["fail/foreign-ca", "fail/forged-issuer-name"])
def test_fail_foreign_or_forged_certificate_handshake_refused(env: Any, tmp_path: Path, which: str) -> None:
    device = env[3] if which == "foreign" else _forged(tmp_path, env[0])
    with pytest.raises(NetworkError, match="handshake"):
        _client(env, device).enroll(cn="stranger")


def test_fail_no_client_certificate_is_4_01(env: Any) -> None:
    with pytest.raises(Unauthorized, match="DTLS client certificate"):
        _client(env).enroll(cn="nobody")


ERRORS = [
    ("fail/unknown-resource", Code.GET, f"{EST}/nope", b"", {}, Code.NOT_FOUND, "unknown EST-coaps resource"),
    ("fail/unknown-label", Code.GET, f"{EST}/nolabel/crts", b"", {}, Code.NOT_FOUND, "label"),
    ("fail/method", Code.POST, f"{EST}/crts", b"", {}, Code.METHOD_NOT_ALLOWED, "crts takes GET"),
    ("fail/content-format", Code.POST, f"{EST}/sen", b"\x30\x00", {"content_format": 0},
     Code.UNSUPPORTED_CONTENT_FORMAT, "Content-Format 286"),
    ("fail/accept", Code.GET, f"{EST}/crts", b"", {"accept": 60}, Code.NOT_ACCEPTABLE, "281 or 287"),
    ("fail/bad-csr", Code.POST, f"{EST}/sen", b"\x30\x03\x02\x01\x00", {"content_format": 286},
     Code.BAD_REQUEST, "PKCS#10"),
    ("fail/critical-option", Code.GET, f"{EST}/crts", b"", {"if_none_match": True}, Code.BAD_OPTION,
     "critical option 5"),
]


@pytest.mark.parametrize("code,path,payload,opts,want,text", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_codes_with_diagnostic(env: Any, code: Code, path: str, payload: bytes, opts: dict[str, Any],
                                     want: Code, text: str) -> None:
    """RFC 9148 §5: the HTTPS side's errors as CoAP codes, with a diagnostic payload."""
    srv, port, idevid = env[0], env[1], env[2]
    with RawCoap(srv, port, idevid) as c:
        r = c.request(c.message(code, path, payload, **opts))
    assert r.code == want and text in r.payload.decode(), (r, r.payload)
    assert r.opt.content_format == 0  # text/plain diagnostic


def test_ok_crts_single_certificate_287(env: Any) -> None:
    srv, port = env[0], env[1]
    with RawCoap(srv, port) as c:
        r = c.request(c.message(Code.GET, f"{EST}/crts", accept=287))
    cert = x509.load_der_x509_certificate(r.payload)
    assert r.code == Code.CONTENT and r.opt.content_format == 287 and cert.issuer == cert.subject


def test_ok_duplicate_confirmable_issues_once(env: Any) -> None:
    """RFC 7252 §4.5: a retransmitted CON (same message ID and token) is answered
    from the first answer, not enrolled again."""
    srv, port, idevid = env[0], env[1], env[2]
    csr = build_csr(generate_key("ec:P-256"), cn="dup-dev")
    with RawCoap(srv, port, idevid) as c:
        msg = c.message(Code.POST, f"{EST}/sen", csr, content_format=286, accept=287)
        first = c.request(msg)
        again = c.request(msg)
        other = c.request(c.message(Code.POST, f"{EST}/sen", csr, content_format=286, accept=287))
    assert first.code == Code.CHANGED and again.payload == first.payload
    serials = {x509.load_der_x509_certificate(r.payload).serial_number for r in (first, again, other)}
    assert len(serials) == 2  # the new message ID is a new request; the duplicate was not


@pytest.mark.parametrize("method,path,payload,opts", [
    pytest.param(Code.GET, f"{EST}/crts", b"", {}, id="ok/crts-block2"),
    pytest.param(Code.POST, f"{EST}/sen", None, {"content_format": 286}, id="ok/sen-block2-follow-ups-not-reissued"),
])
def test_ok_block2_small_blocks_with_size2(env: Any, method: Code, path: str, payload: bytes | None,
                                           opts: dict[str, Any]) -> None:
    """RFC 7959 §2.4: the client asks for 64-byte blocks; Size2 tells the total (§4);
    a POST's follow-ups carry no payload and get the kept response."""
    srv, port, idevid = env[0], env[1], env[2]
    body = build_csr(generate_key("ec:P-256"), cn="block2-dev") if payload is None else payload
    with RawCoap(srv, port, idevid) as c:
        r = c.request(c.message(method, path, body, block2=BlockOption.BlockwiseTuple(0, False, 2), **opts))
        got, total, num = bytearray(r.payload), r.opt.size2, 0
        assert r.opt.block2.more and len(r.payload) == 64 and total > 64
        while r.opt.block2.more:
            num += 1
            r = c.request(c.message(method, path, b"", block2=BlockOption.BlockwiseTuple(num, False, 2)))
            assert r.code.is_successful() and r.opt.block2.block_number == num
            got += r.payload
    assert len(got) == total
    certs = parse_certs_only(bytes(got))
    assert certs and (method == Code.GET or certs[0].subject.rfc4514_string() == "CN=block2-dev")


def test_ok_sighup_reloads_the_dtls_certificate(env: Any) -> None:
    """SIGHUP: new DTLS handshakes get the certificate now on disk, as HTTPS does (last: it changes the server)."""
    srv, port = env[0], env[1]
    d = srv.dir

    def serial() -> int:
        with DtlsConnection("127.0.0.1", port, trust_pem=srv.ca_pem.read_text(), verify=True, client_cert=None,
                            timeout=10) as c:
            c.handshake()
            assert c.peer_certificate is not None
            return int(c.peer_certificate.serial_number)

    old = serial()
    ca = x509.load_pem_x509_certificate((d / "ca" / "root.pem").read_bytes())
    key = generate_key("ec:P-256")
    cert = make_tls_certificate(key, ca, load_signer(d / "ca" / "root.key", None), ["localhost", "127.0.0.1"])
    (d / "tls" / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (d / "tls" / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while serial() == old and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serial() == cert.serial_number


def test_ok_skc_returns_the_key_encrypted_to_the_client_certificate(env: Any, tmp_path: Path) -> None:
    """RFC 9148 §4.8: skc answers the private key CMS-encrypted (280) to the
    client's certificate, with the certificate (281), even when the CSR does not ask."""
    srv, port = env[0], env[1]
    key, cert = _client(env, env[2]).enroll(cn="skc-dev")
    dev = _save(tmp_path, "skc-dev", key, cert)
    with RawCoap(srv, port, dev) as c:
        r, payload = request_all(c, c.message(Code.POST, f"{EST}/skc",
                                              build_csr(generate_key("ec:P-256"), cn="skc-dev"), content_format=286))
    assert r.code == Code.CHANGED and r.opt.content_format == 62, (r, payload)
    parts = dict(decode_multipart_core(payload))
    assert set(parts) == {280, 281}, parts.keys()
    key_der, _signers = unwrap_server_key(parts[280], key)
    server_key = serialization.load_der_private_key(key_der, None)
    (kg_cert,) = parse_certs_only(parts[281])
    assert kg_cert.public_key() == server_key.public_key()
    _verify(srv, tmp_path, kg_cert, "skc")
