"""Who signs OCSP responses: each issuing CA's delegated OCSP signing
certificate (RFC 6960 §4.2.2.2), issued and renewed by estkit itself, or the
CA key (``[server] ocsp_signer = "ca"``).

A delegated certificate carries id-kp-OCSPSigning and id-pkix-ocsp-nocheck
(RFC 6960 §4.2.2.2.1: clients do not check its own revocation, so it lives
short).  It is kept in ``DIR/ocsp/<ca>.pem`` and ``<ca>.key`` (mode 0600, a
key readable by others is refused) and renewed when less than a third of its
life is left.  The serving parent checks before forking the workers; each
worker checks periodically (under a file lock, so one renews and the others
load the new files).  Every responder certificate is recorded in the store
like any certificate the CA signs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from estkit.ca.authority import CertificateAuthority, IssuingCA
from estkit.ca.ocsp import ResponderKey
from estkit.ca.server_cert import record_own_certificate
from estkit.ca.signer import load_signer, write_private_key
from estkit.protocol.keys import generate_key, key_type_of

__all__ = ["ResponderKeys", "SIGNER_MODES", "issue_responder_certificate", "needs_renewal", "RESPONDER_LIFETIME"]

log = logging.getLogger("estkit.ocsp")

SIGNER_MODES = ("delegated", "ca")
RESPONDER_LIFETIME = timedelta(days=30)
REQUESTER = "estkit serve"


def needs_renewal(cert: x509.Certificate, issuing: IssuingCA, now: datetime) -> bool:
    """Less than a third of its life left, or not (any more) signed by this CA."""
    try:
        cert.verify_directly_issued_by(issuing.cert)
    except (ValueError, TypeError, InvalidSignature):  # another issuer, or the CA key changed
        return True
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < life / 3


def issue_responder_certificate(issuing: IssuingCA, now: datetime, lifetime: timedelta = RESPONDER_LIFETIME
                                ) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """A new delegated OCSP signing certificate and its key (RFC 6960 §4.2.2.2)."""
    key = generate_key(key_type_of(issuing.cert.public_key()))  # as strong as the CA's own
    cn = next((str(a.value) for a in issuing.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)),
              issuing.name)
    not_after = min(now + lifetime, issuing.cert.not_valid_after_utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} OCSP Responder")]))
         .issuer_name(issuing.cert.subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(minutes=5))
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                      crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         # RFC 6960 §4.2.2.2: id-kp-OCSPSigning makes it a delegated responder of this CA only.
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
         # RFC 6960 §4.2.2.2.1: id-pkix-ocsp-nocheck, clients trust it for its (short) lifetime.
         .add_extension(x509.OCSPNoCheck(), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuing.cert.public_key()), critical=False))  # type: ignore[arg-type]
    return issuing.signer.sign_certificate(b), key


class ResponderKeys:
    """Each issuing CA's :class:`ResponderKey`, kept current by :meth:`refresh`."""

    def __init__(self, ca: CertificateAuthority, directory: Path, mode: str = "delegated", *,
                 lifetime: timedelta = RESPONDER_LIFETIME, clock: Callable[[], datetime] | None = None) -> None:
        if mode not in SIGNER_MODES:
            raise ValueError(f"unknown OCSP signer {mode!r} (one of {', '.join(SIGNER_MODES)})")
        self.ca = ca
        self.directory = directory
        self.mode = mode
        self.lifetime = lifetime
        self.clock = clock if clock is not None else ca.clock
        self._keys: dict[str, ResponderKey] = {}
        self._loaded: dict[str, tuple[int, int]] = {}  # (inode, mtime) of the certificate file in use

    def get(self, ca_name: str) -> ResponderKey:
        """The signer for one CA (loading or issuing it on first use)."""
        key = self._keys.get(ca_name)
        if key is None:
            self.refresh()
            key = self._keys[ca_name]
        return key

    def paths(self, ca_name: str) -> tuple[Path, Path]:
        """The certificate and key files of a CA's delegated responder."""
        return self.directory / f"{ca_name}.pem", self.directory / f"{ca_name}.key"

    def refresh(self) -> None:
        """Load each CA's responder; issue a new one where it is missing or due for renewal."""
        if self.mode == "ca":
            self._keys = {n: ResponderKey(i.cert, i.signer, delegated=False) for n, i in self.ca.cas.items()}
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process renews, the others then load its files
            for name, issuing in self.ca.cas.items():
                self._refresh_one(name, issuing)

    def _refresh_one(self, name: str, issuing: IssuingCA) -> None:
        cert_path, key_path = self.paths(name)
        cert: x509.Certificate | None = None
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if needs_renewal(cert, issuing, self.clock()):
                log.info("renewing the OCSP responder certificate of CA %r (valid until %s)", name,
                         cert.not_valid_after_utc.isoformat())
                cert = None
        if cert is None:
            cert = self._renew(name, issuing)
        st = cert_path.stat()
        if self._loaded.get(name) == (st.st_ino, st.st_mtime_ns) and name in self._keys:
            return
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise ValueError(f"{key_path}: the OCSP signing key is readable by others (mode {mode:o}); "
                             "it must be 0600")
        signer = load_signer(key_path)
        if signer.public_key() != cert.public_key():
            raise ValueError(f"{key_path}: the key does not match {cert_path}")
        self._keys[name] = ResponderKey(cert, signer, delegated=True)
        self._loaded[name] = (st.st_ino, st.st_mtime_ns)

    def _renew(self, name: str, issuing: IssuingCA) -> x509.Certificate:
        """Issue, record (every certificate the CA signs is in the store), then
        replace the files: key first, each atomically (the lock keeps readers out)."""
        now = self.clock()
        cert, key = issue_responder_certificate(issuing, now, self.lifetime)
        record_own_certificate(self.ca.store, cert, ca=name, requester=REQUESTER, at=now,
                               detail="OCSP responder certificate (RFC 6960 §4.2.2.2)")
        cert_path, key_path = self.paths(name)
        for tmp in (key_path.with_suffix(".key.new"), cert_path.with_suffix(".pem.new")):
            tmp.unlink(missing_ok=True)
        write_private_key(key_path.with_suffix(".key.new"), key)  # 0600 from the start
        os.replace(key_path.with_suffix(".key.new"), key_path)
        cert_path.with_suffix(".pem.new").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(cert_path.with_suffix(".pem.new"), cert_path)
        log.info("issued the OCSP responder certificate of CA %r, serial %x, valid until %s", name,
                 cert.serial_number, cert.not_valid_after_utc.isoformat())
        return cert
