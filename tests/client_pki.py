"""A small PKI for client tests: a root, an intermediate, leaves, a CRL; and
PEM helpers.  Real certificates made with cryptography, nothing mocked."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from estkit.protocol.constants import OID_KP_CMC_RA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(issuer_key: Any, issuer: x509.Name | None, subject: str, public_key: Any, *, ca: bool = False,
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), ekus: tuple[Any, ...] = (),
          days: int = 30, not_before: datetime | None = None) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``issuer_key``."""
    now = not_before or datetime.now(UTC) - timedelta(minutes=5)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer or _name(subject))
         .public_key(public_key).serial_number(x509.random_serial_number())
         .not_valid_before(now).not_valid_after(now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    root_key: Any
    root: x509.Certificate
    sub_key: Any
    sub: x509.Certificate

    def leaf(self, cn: str, **kw: Any) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        return key, issue(self.sub_key, self.sub.subject, cn, key.public_key(), **kw)

    def server(self, *, dns: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",),
               ra: bool = False) -> tuple[Any, x509.Certificate]:
        ekus = (ExtendedKeyUsageOID.SERVER_AUTH, OID_KP_CMC_RA) if ra else (ExtendedKeyUsageOID.SERVER_AUTH,)
        return self.leaf("est-test-server", dns=dns, ips=ips, ekus=ekus)

    def crl(self) -> x509.CertificateRevocationList:
        now = datetime.now(UTC)
        return (x509.CertificateRevocationListBuilder().issuer_name(self.sub.subject).last_update(now)
                .next_update(now + timedelta(days=1)).sign(self.sub_key, hashes.SHA256()))


def make_pki() -> Pki:
    rk = ec.generate_private_key(ec.SECP256R1())
    root = issue(rk, None, "client-test root", rk.public_key(), ca=True, days=365)
    sk = ec.generate_private_key(ec.SECP256R1())
    sub = issue(rk, root.subject, "client-test issuing", sk.public_key(), ca=True, days=365)
    return Pki(rk, root, sk, sub)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_pair(directory: Path, name: str, key: Any, cert: x509.Certificate,
               chain: tuple[x509.Certificate, ...] = ()) -> tuple[Path, Path]:
    cp, kp = directory / f"{name}.pem", directory / f"{name}.key"
    cp.write_bytes(pem(cert, *chain))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp
