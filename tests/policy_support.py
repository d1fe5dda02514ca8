"""Helpers of the authorization end-to-end tests: a device manufacturer CA with
an IDevID, enrolling over real TLS, and the audit trail as `estkit audit` prints it."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from support import Reply, ServerProcess, basic, estkit, https

from estkit.ca.create import ca_name, make_ca_certificate
from estkit.ca.signer import KeySigner
from estkit.protocol.csr import build_csr
from estkit.protocol.framing import decode_b64
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

PKCS10 = {"Content-Type": "application/pkcs10"}
MFG_CA = "CN=Device Manufacturer CA"


def write_key(path: Path, key: Any) -> Path:
    path.write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def manufacturer(d: Path, serial_number: str = "SN123") -> dict[str, Path]:
    """A foreign manufacturer CA (a bootstrap trust anchor) and an IDevID it issued."""
    k = generate_key("ec:P-256")
    root = make_ca_certificate(ca_name("Device Manufacturer CA"), k.public_key(), KeySigner(k))
    dk = generate_key("ec:P-256")
    now = datetime.now(UTC)
    dev = KeySigner(k).sign_certificate(
        x509.CertificateBuilder().subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "idevid"), x509.NameAttribute(NameOID.SERIAL_NUMBER,
                                                                                  serial_number)]))
        .issuer_name(root.subject).public_key(dk.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    (d / "mfg-ca.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (d / "idevid.pem").write_bytes(dev.public_bytes(Encoding.PEM))
    write_key(d / "idevid.key", dk)
    return {"ca": d / "mfg-ca.pem", "cert": d / "idevid.pem", "key": d / "idevid.key"}


def fingerprint(csr_der: bytes) -> str:
    return hashlib.sha256(csr_der).hexdigest()


def enroll(srv: ServerProcess, csr_der: bytes, *, user: tuple[str, str] | None = None, label: str | None = None,
           tls: tuple[Path, Path] | None = None, op: str = "simpleenroll") -> tuple[Reply, x509.Certificate | None]:
    """POST a CSR; the reply and, on 200, the certificate."""
    headers = dict(PKCS10)
    if user is not None:
        headers["Authorization"] = basic(*user)
    ctx = srv.ssl_context(*tls) if tls else None
    r = https(srv, "POST", op, base64.b64encode(csr_der) + b"\n", label=label, headers=headers, ctx=ctx)
    cert = parse_certs_only(decode_b64(r.body))[0] if r.status == 200 and op != "serverkeygen" else None
    return r, cert


def issue_cert(srv: ServerProcess, tmp: Path, cn: str, *, user: tuple[str, str], label: str | None = None
               ) -> tuple[Path, Path, x509.Certificate]:
    """A certificate and key on disk (for TLS client authentication)."""
    key = generate_key("ec:P-256")
    r, cert = enroll(srv, build_csr(key, cn=cn), user=user, label=label)
    assert r.status == 200 and cert is not None, r.body
    cp = tmp / f"{cn}.pem"
    cp.write_bytes(cert.public_bytes(Encoding.PEM))
    return cp, write_key(tmp / f"{cn}.key", key), cert


def audit(srv: ServerProcess, *args: str) -> list[dict[str, Any]]:
    """`estkit audit --json ...` against the server's store, newest first."""
    out = estkit("audit", "--dir", str(srv.dir), "--json", *args, env=srv.env).stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def last_audit(srv: ServerProcess, identity: str, event: str | None = None) -> dict[str, Any]:
    rows = audit(srv, "--identity", identity, "--limit", "1", *(("--event", event) if event else ()))
    assert rows, f"no audit event for {identity}"
    return rows[0]


def check_audit(srv: ServerProcess, identity: str, csr_der: bytes, label: str, *, event: str,
                cert: x509.Certificate | None = None, detail: str | None = None) -> dict[str, Any]:
    """The identity's newest event of this kind is this decision, with time, peer,
    label, request fingerprint and (when issued) the serial."""
    e = last_audit(srv, identity, event)
    assert e["event"] == event and e["label"] == label and e["csr_fingerprint"] == fingerprint(csr_der), e
    assert e["peer"].startswith("127.0.0.1:") and datetime.fromisoformat(e["at"]) > datetime.now(UTC) - timedelta(
        minutes=5), e
    if cert is not None:
        assert e["serial"] == format(cert.serial_number, "x"), e
    if detail is not None:
        assert detail in e["detail"], e
    return e
