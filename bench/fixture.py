"""What a benchmark run needs on disk: an estkit directory per CA key type,
a user, rotated CSRs, and a store pre-filled with realistic certificate rows.

The pre-fill inserts rows through ``estkit.store`` tables with SQLAlchemy
Core bulk inserts (one certificate row and its audit row each, as an
issuance writes them), not through enrollments: 100,000 rows take seconds.
The DER of each row is one of a few hundred real certificates signed by the
directory's CA, so rows have realistic sizes; serials, subjects and SANs are
unique per row.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["KEY_TYPES", "make_dir", "write_csrs", "prefill", "count_rows", "BENCH_USER", "BENCH_PASSWORD"]

KEY_TYPES = {"p256": "ec:P-256", "rsa2048": "rsa:2048", "softhsm-p256": "ec:P-256", "softhsm-rsa2048": "rsa:2048"}
# CA key types whose key is in a SoftHSM2 token (issue 15) rather than in a file.
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SOFTHSM_PIN = "bench-pin-not-secret"
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password-not-secret"
ESTKIT = str(Path(sys.executable).parent / "estkit")


def softhsm_token(work: Path, label: str) -> None:
    """A fresh SoftHSM2 token ``label`` under ``work`` (its config and PIN exported to this
    process's environment, which ``estkit init`` and ``estkit serve`` inherit)."""
    conf = work / "softhsm2.conf"
    if not conf.exists():
        (work / "tokens").mkdir(parents=True, exist_ok=True)
        conf.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["ESTKIT_PKCS11_PIN"] = SOFTHSM_PIN
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", SOFTHSM_PIN,
                    "--so-pin", SOFTHSM_PIN + "-so"], check=True, capture_output=True)


def make_dir(directory: Path, key: str, *, workers: int, access_log: bool = True) -> Path:
    """``estkit init`` with the CA key type, one Basic user; returns the directory.
    ``softhsm-*`` keys are generated in a SoftHSM2 token of their own."""
    token: list[str] = []
    if key.startswith("softhsm-"):
        softhsm_token(directory.parent / "softhsm", directory.name)
        token = ["--pkcs11-module", SOFTHSM_MODULE, "--pkcs11-token", directory.name]
    done = subprocess.run([ESTKIT, "init", "--dir", str(directory), "--key-type", KEY_TYPES[key], *token],
                          capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"estkit init ({key}) failed: {done.stderr.decode().strip()}")
    subprocess.run([ESTKIT, "user", "add", BENCH_USER, "--dir", str(directory), "--password-stdin"],
                   input=(BENCH_PASSWORD + "\n").encode(), check=True, capture_output=True)
    cfg = directory / "config.toml"
    text = cfg.read_text()
    if not access_log:
        text = text.replace("access_log = true", "access_log = false")
    cfg.write_text(text)
    return directory


def write_csrs(path: Path, n: int) -> Path:
    """``n`` distinct P-256 CSRs (device keys), base64 DER one per line."""
    lines = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-device-{i}")]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"bench-device-{i}.example.com")]),
                              critical=False)
               .sign(key, hashes.SHA256()))
        lines.append(base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode())
    path.write_text("\n".join(lines) + "\n")
    return path


def _store_url(directory: Path) -> str:
    return os.environ.get("ESTKIT_STORE_URL") or "sqlite:///" + str((directory / "estkit.db").resolve())


def _templates(directory: Path, n: int) -> list[bytes]:
    """``n`` real certificates signed by the directory's CA key (in its file or,
    for a ``softhsm-*`` directory, in its token)."""
    import ceiling
    ca = x509.load_pem_x509_certificate((directory / "ca/root.pem").read_bytes())
    token = ceiling._token_signer(directory, ca)
    key = None if token is not None else serialization.load_pem_private_key(
        (directory / "ca/root.key").read_bytes(), None)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        leaf = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = (x509.CertificateBuilder().subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, f"prefill-{i}")]))
                .issuer_name(ca.subject).public_key(leaf).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"prefill-{i}.example.com")]),
                               critical=False))
        signed = token.sign_certificate(cert) if token is not None else cert.sign(key, hashes.SHA256())  # type: ignore[arg-type]
        out.append(signed.public_bytes(serialization.Encoding.DER))
    return out


def prefill(directory: Path, rows: int, *, batch: int = 5000) -> float:
    """Insert ``rows`` certificate rows (and their audit rows); returns seconds taken."""
    import time

    from sqlalchemy import insert

    from estkit.store import open_store
    from estkit.store.models import Audit, Certificate
    t0 = time.monotonic()
    if rows <= 0:
        return 0.0
    store = open_store(_store_url(directory))
    ders = _templates(directory, min(rows, 300))
    now = datetime.now(UTC)
    certs = Certificate.__table__
    audit = Audit.__table__
    done = 0
    with store.engine.begin() as conn:
        while done < rows:
            n = min(batch, rows - done)
            crow, arow = [], []
            for i in range(done, done + n):
                serial = format(int.from_bytes(os.urandom(20), "big") >> 1, "x")
                at = now - timedelta(seconds=rows - i)
                crow.append(dict(serial=serial, ca="default", label="default", subject=f"CN=prefill-{i}",
                                 sans=json.dumps([f"DNS:prefill-{i}.example.com"]), not_before=at,
                                 not_after=at + timedelta(days=365), requester="user:prefill",
                                 key_type="ec:P-256", csr_fingerprint=os.urandom(32).hex(),
                                 der=ders[i % len(ders)], issued_at=at))
                arow.append(dict(at=at, event="issued", identity="user:prefill", peer="127.0.0.1:1",
                                 label="default", csr_fingerprint=crow[-1]["csr_fingerprint"], serial=serial,
                                 detail="simpleenroll"))
            conn.execute(insert(certs), crow)
            conn.execute(insert(audit), arow)
            done += n
    store.close()
    return time.monotonic() - t0


def count_rows(directory: Path) -> int:
    """Certificates in the directory's store."""
    from estkit.store import open_store
    store = open_store(_store_url(directory), upgrade=False)
    try:
        return store.count_certificates()
    finally:
        store.close()
