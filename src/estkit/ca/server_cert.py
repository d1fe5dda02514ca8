"""The EST server's own TLS certificate, kept current by the server itself.

``estkit init`` has the CA issue the server's TLS certificate; left alone, it
would expire one day and every client would fail its handshake.  A serving
estkit therefore renews it from the same CA before it expires, when that CA
is one of its own: the same names (DNS and IP SANs), the same CRL
Distribution Point and OCSP URL (RFC 5280 §4.2.1.13, §4.2.2.1), a new key of
the same type, recorded in the store like every certificate the CA signs.
A certificate from another CA (a public one, say) is the operator's to renew:
estkit only says so, once.

Several workers check; a file lock beside the certificate lets one renew and
the others load its files, each into its own TLS context (``on_change``).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from estkit.ca.authority import CertificateAuthority, IssuingCA
from estkit.ca.create import make_tls_certificate
from estkit.ca.ports import AuditEvent, CertStore, IssuedCert, utc_now
from estkit.ca.signer import write_private_key
from estkit.protocol.csr import csr_fingerprint, general_names_text
from estkit.protocol.keys import generate_key, key_type_of

__all__ = ["ServerCertificate", "record_own_certificate", "TLS_LIFETIME_DAYS"]

log = logging.getLogger("estkit")

TLS_LIFETIME_DAYS = 825  # as `estkit init` issues it (capped by the CA's own not-after)
REQUESTER = "estkit serve"


def record_own_certificate(store: CertStore, cert: x509.Certificate, *, ca: str, requester: str, detail: str,
                           event: str = "issued", at: datetime | None = None) -> None:
    """Record a certificate estkit signed for itself, outside EST (its TLS
    certificate, an OCSP responder's), with its audit event: every certificate
    the CA signs is in the store."""
    try:
        sans = tuple(general_names_text(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value))
    except x509.ExtensionNotFound:
        sans = ()
    der = cert.public_bytes(Encoding.DER)
    store.record_issued(
        IssuedCert(serial=cert.serial_number, ca=ca, label="-", subject=cert.subject.rfc4514_string(), sans=sans,
                   not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, requester=requester,
                   key_type=key_type_of(cert.public_key()), csr_fingerprint=csr_fingerprint(der), der=der),
        AuditEvent(event=event, identity=requester, peer="-", label="-", serial=cert.serial_number, detail=detail,
                   at=at or utc_now()))


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _urls(cert: x509.Certificate) -> tuple[str | None, str | None]:
    """The CRL Distribution Point and the OCSP responder URL a certificate names."""
    crl = ocsp = None
    dps = _extension(cert, x509.CRLDistributionPoints)
    if isinstance(dps, x509.CRLDistributionPoints):
        crl = next((str(n.value) for dp in dps for n in dp.full_name or ()
                    if isinstance(n, x509.UniformResourceIdentifier)), None)
    aia = _extension(cert, x509.AuthorityInformationAccess)
    if isinstance(aia, x509.AuthorityInformationAccess):
        ocsp = next((str(d.access_location.value) for d in aia
                     if d.access_method == AuthorityInformationAccessOID.OCSP), None)
    return crl, ocsp


def _names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of a TLS certificate, in its order."""
    san = _extension(cert, x509.SubjectAlternativeName)
    if not isinstance(san, x509.SubjectAlternativeName):
        return []
    return [str(n.value) for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))]


class ServerCertificate:
    """The TLS certificate and key files the server serves, renewed in place.

    ``refresh()`` loads what is on disk when it changed (another worker renewed,
    or an operator replaced the files) and renews when less than
    ``renew_before`` is left; ``on_change`` hears of each certificate it loads."""

    def __init__(self, ca: CertificateAuthority, cert_path: Path, key_path: Path, *, renew_before: timedelta,
                 on_change: Callable[[x509.Certificate], None] | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.ca = ca
        self.cert_path = cert_path
        self.key_path = key_path
        self.renew_before = renew_before
        self.on_change = on_change
        self.clock = clock if clock is not None else ca.clock
        self._said: set[str] = set()  # warnings given once per process
        self._loaded = self._stamp()  # (inode, mtime) of the certificate file in use
        self.current = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]

    def _stamp(self) -> tuple[int, int]:
        st = self.cert_path.stat()
        return st.st_ino, st.st_mtime_ns

    def refresh(self) -> None:
        """Load a changed certificate; renew one that is due (renew_before 0: never)."""
        with open(self.cert_path.parent / ".renew.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one worker renews; the others then load its files
            if self._stamp() != self._loaded and not self._load():
                return
            if self.renew_before and self.current.not_valid_after_utc - self.clock() < self.renew_before:
                issuing = self._issuer()
                if issuing is not None and self._renew(issuing):
                    self._load()

    def reload(self) -> None:
        """Load the files as they are now (SIGHUP: an operator replaced them)."""
        with open(self.cert_path.parent / ".renew.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._load()

    def _load(self) -> bool:
        """Read the certificate file and tell ``on_change``; False (logged) when it is unreadable."""
        try:
            stamp = self._stamp()
            cert = x509.load_pem_x509_certificates(self.cert_path.read_bytes())[0]
        except (OSError, ValueError, IndexError) as exc:
            log.error("cannot read the TLS certificate %s (%s); still serving the old one", self.cert_path, exc)
            return False
        self.current = cert
        if self.on_change is not None:
            self.on_change(cert)
        self._loaded = stamp
        return True

    def _once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(msg, *args)

    def _issuer(self) -> IssuingCA | None:
        """The CA of ours that issued the certificate, or None (then it is not ours to renew)."""
        cert = self.current
        issuing = self.ca.ca_named(cert.issuer.public_bytes())
        if issuing is not None:
            try:
                cert.verify_directly_issued_by(issuing.cert)
                return issuing
            except (ValueError, TypeError, InvalidSignature):
                pass
        self._once("foreign", "the TLS certificate %s expires %s and was not issued by a CA of this estkit "
                   "(issuer %s): renew it yourself, then send SIGHUP", self.cert_path,
                   cert.not_valid_after_utc.isoformat(), cert.issuer.rfc4514_string())
        return None

    def _renew(self, issuing: IssuingCA) -> bool:
        """Issue, record, then replace the key and the certificate file (each
        atomically; the chain after the first certificate is kept)."""
        old, now = self.current, self.clock()
        names = _names(old)
        if not names:
            self._once("names", "the TLS certificate %s names no DNS name or IP address: not renewed", self.cert_path)
            return False
        crl_url, ocsp_url = _urls(old)
        key = generate_key(key_type_of(old.public_key()))
        cert = make_tls_certificate(key, issuing.cert, issuing.signer, names, days=TLS_LIFETIME_DAYS,
                                    crl_url=crl_url, ocsp_url=ocsp_url, now=now)
        if cert.not_valid_after_utc <= old.not_valid_after_utc + timedelta(days=1):
            # The CA itself expires first: a new certificate would be no better (and due again at once).
            self._once("ca", "the TLS certificate %s is due for renewal, but CA %r expires %s: renew or roll "
                       "over the CA", self.cert_path, issuing.name, issuing.cert.not_valid_after_utc.isoformat())
            return False
        record_own_certificate(self.ca.store, cert, ca=issuing.name, requester=REQUESTER, at=now,
                               detail=f"TLS server certificate renewed (serial {old.serial_number:x} "
                                      f"expires {old.not_valid_after_utc.isoformat()})")
        chain = b"".join(c.public_bytes(Encoding.PEM)
                         for c in x509.load_pem_x509_certificates(self.cert_path.read_bytes())[1:])
        key_new, cert_new = self.key_path.with_name(self.key_path.name + ".new"), \
            self.cert_path.with_name(self.cert_path.name + ".new")
        for tmp in (key_new, cert_new):
            tmp.unlink(missing_ok=True)
        write_private_key(key_new, key)  # 0600 from the start
        cert_new.write_bytes(cert.public_bytes(Encoding.PEM) + chain)
        # The key first: a reader between the two replaces (none: the lock) would see a mismatch.
        os.replace(key_new, self.key_path)
        os.replace(cert_new, self.cert_path)
        log.info("renewed the TLS certificate %s: serial %x, valid until %s (the old one expires %s)",
                 self.cert_path, cert.serial_number, cert.not_valid_after_utc.isoformat(),
                 old.not_valid_after_utc.isoformat())
        return True
