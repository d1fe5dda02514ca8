"""The ceiling measured in the same run: what one core does of the
unavoidable crypto, and ``openssl s_server`` full handshakes per second under
the same load generator.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

__all__ = ["crypto_micro", "s_server", "wait_port", "free_port"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until 127.0.0.1:port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _rate(fn: object, seconds: float) -> float:
    call = fn  # type: ignore[assignment]
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(20):
            call()  # type: ignore[operator]
        n += 20
        t = time.perf_counter()
        if t >= end:
            return n / (t - t0)


def crypto_micro(ca_dir: Path, csr_file: Path, seconds: float = 1.0) -> dict[str, float]:
    """One core (this process, one thread): CSR verifications per second
    (parse + signature check of the benchmark's CSRs) and certificate
    signatures per second with the directory's CA key (a finished builder
    signed and encoded), and the enrollments per second those two allow."""
    csrs = [base64.b64decode(line) for line in csr_file.read_text().split()]
    ca = x509.load_pem_x509_certificate((ca_dir / "ca/root.pem").read_bytes())
    token_signer = _token_signer(ca_dir, ca)
    leaf = x509.load_der_x509_csr(csrs[0]).public_key()
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "micro")]))
               .issuer_name(ca.subject).public_key(leaf).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    i = [0]

    def verify() -> None:
        i[0] += 1
        if not x509.load_der_x509_csr(csrs[i[0] % len(csrs)]).is_signature_valid:
            raise AssertionError("benchmark CSR does not verify")

    if token_signer is None:
        key = serialization.load_pem_private_key((ca_dir / "ca/root.key").read_bytes(), None)

        def sign() -> None:
            builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]
    else:
        def sign() -> None:  # through the token: stand-in TBS, the token's signature, assembly, check
            token_signer.sign_certificate(builder).public_bytes(serialization.Encoding.DER)

    v = _rate(verify, seconds)
    s = _rate(sign, seconds)
    out = {"csr_verify_per_s": v, "cert_sign_per_s": s, "crypto_ms_per_enroll": 1000 / v + 1000 / s,
           "crypto_enroll_per_s_per_core": 1 / (1 / v + 1 / s)}
    out["ca_enroll_ms"] = ca_enroll_ms(ca_dir, csrs, seconds)
    if token_signer is not None:
        # The token alone: raw signatures per second over one session (what C_Sign costs),
        # in this process as one worker would make them.
        out["token_sign_per_s"] = _rate(lambda: token_signer.sign_data(b"estkit bench payload"), seconds)
    return out


def describe_micro(key: str, m: dict[str, float]) -> str:
    """The line bench.py prints for ``crypto_micro``'s figures."""
    token = f"  token alone {m['token_sign_per_s']:8.0f} signatures/s" if "token_sign_per_s" in m else ""
    return (f"  micro     {key:8s} CSR verify {m['csr_verify_per_s']:8.0f}/s  cert sign {m['cert_sign_per_s']:8.0f}/s  "
            f"CA's own {m['ca_enroll_ms']:.2f} ms/enrollment  (one core){token}")


def ca_enroll_ms(ca_dir: Path, csrs: list[bytes], seconds: float = 1.0) -> float:
    """The CA's own cost of one enrollment, one thread, CPU ms (issue 17's
    yardstick for kept-alive enrollments): what an ``estkit serve`` worker does
    between reading the body and writing the response, without HTTP or TLS --
    HTTP Basic with the password already verified (the cache), the PKCS#10
    decoded and checked, the policy sequence, the signature, the certificate
    and its audit row committed (fsync included), the certs-only answer.  On a
    copy of the directory, so the measured server's store is not touched."""
    import os
    import tempfile

    from estkit.ca.identity import RequestContext
    from estkit.cli.common import config_for
    from estkit.cli.wiring import build_authority, build_store
    from estkit.protocol.framing import encode_b64
    from estkit.protocol.pkcs7 import certs_only
    from estkit.protocol.request import decode_pkcs10

    from fixture import BENCH_PASSWORD, BENCH_USER
    copy = Path(tempfile.mkdtemp(prefix="ca-micro-", dir=ca_dir.parent)) / "d"
    shutil.copytree(ca_dir, copy)
    store = build_store(config_for(str(copy)))
    ca = build_authority(config_for(str(copy)), store)
    i = [0]

    def enroll() -> None:
        i[0] += 1
        ctx = RequestContext(identity=ca.authenticate_user(BENCH_USER, BENCH_PASSWORD), peer="127.0.0.1:1")
        cert = ca.simpleenroll(None, decode_pkcs10(csrs[i[0] % len(csrs)]), ctx)
        encode_b64(certs_only([cert]))

    enroll()  # the one scrypt, remembered from here on as in a worker
    t0, n, cpu0 = time.perf_counter(), 0, os.times()
    while time.perf_counter() - t0 < seconds:
        enroll()
        n += 1
    cpu1 = os.times()
    store.close()
    shutil.rmtree(copy.parent, ignore_errors=True)
    return ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / n * 1000


def _token_signer(ca_dir: Path, ca: x509.Certificate) -> Any:
    """The directory's PKCS#11 signer when its CA key is in a token, else None."""
    import tomllib

    from estkit.ca.pkcs11 import Pkcs11Signer
    from estkit.ca.pkcs11_uri import Pkcs11Uri, TokenSettings, is_pkcs11_uri
    doc = tomllib.loads((ca_dir / "config.toml").read_text())
    key = doc["cas"]["default"]["key"]
    if not is_pkcs11_uri(key):
        return None
    return Pkcs11Signer(Pkcs11Uri.parse(key), TokenSettings(**doc.get("pkcs11", {})), ca.public_key())


@contextmanager
def s_server(cert: Path, key: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``openssl s_server -www`` with the EST server's own TLS certificate and
    key, session tickets at OpenSSL's default (as the EST server): yields
    (port, process)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl not installed: no handshake ceiling")
    port = free_port()
    proc = subprocess.Popen([openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
                             "-www", "-quiet", "-naccept", "100000000"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
