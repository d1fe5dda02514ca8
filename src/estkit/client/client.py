"""The EST client (RFC 7030 §4): one method per operation.

    client = EstClient("https://est.example.com", trust="ca.pem", auth=BasicAuth("dev1", pw))
    chain = client.cacerts()
    key, cert = client.enroll(cn="dev1", dns=["dev1.example.com"])
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.client.auth import ClientCertificate, PasswordAuth
from estkit.client.bootstrap import BootstrapOffer, Confirm
from estkit.client.csrspec import CsrInput, CsrSpec, load_csr_input, spec_from_certificate
from estkit.client.errors import CsrAttrsWarning, ProtocolError, TrustError
from estkit.client.responses import (certificates, error_from, issued_certificate, parse_retry_after, payload_der,
                                     read_serverkeygen)
from estkit.client.transport import BodyFor, Endpoint, Response, Transport
from estkit.errors import BadRequest, EstError
from estkit.protocol import constants as c
from estkit.protocol.cmc_cms import CmsError
from estkit.protocol.csrattrs import CsrAttrs, decode_csrattrs, key_types_from
from estkit.protocol.envelope import unwrap_server_key
from estkit.protocol.framing import encode_b64
from estkit.protocol.keys import generate_key, key_type_of

if TYPE_CHECKING:
    from estkit.client.coap import CoapTransport

__all__ = ["EstClient", "PendingWait", "Trust", "DEFAULT_KEY_TYPE"]

DEFAULT_KEY_TYPE = "ec:P-256"
Trust = str | Path | Sequence[x509.Certificate] | None


@dataclass(frozen=True)
class PendingWait:
    """A 202 the client is waiting on (RFC 7030 §4.2.3): shown to the caller's ``on_pending``."""

    operation: str
    attempt: int
    retry_after: int
    until: datetime
    reason: str


def _trust_pem(trust: Trust) -> str | None:
    if trust is None:
        return None
    if isinstance(trust, (str, Path)):
        text = Path(trust).read_text()
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{trust}: no PEM certificate")
        return text
    return "".join(cert.public_bytes(Encoding.PEM).decode() for cert in trust)


class EstClient:
    """An EST client for one server and CA label.

    ``trust``: the Explicit trust anchors (a PEM file or certificates); None
    uses the system's Implicit store (RFC 7030 §3.6.1).  ``auth``: a
    :class:`PasswordAuth` (``BasicAuth``/``DigestAuth``) answering 401
    challenges, and/or ``client_cert`` for TLS client authentication.
    ``pending_retries``: how many times a 202 (§4.2.3) is waited out and the
    request resent before :class:`estkit.errors.Pending` is raised;
    ``on_pending`` hears about each wait."""

    def __init__(self, url: str, *, trust: Trust = None, label: str | None = None,
                 auth: PasswordAuth | ClientCertificate | None = None, client_cert: ClientCertificate | None = None,
                 timeout: float = 30.0, pending_retries: int = 0, max_retry_after: int = 86400,
                 on_pending: Callable[[PendingWait], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if isinstance(auth, ClientCertificate):
            auth, client_cert = None, client_cert or auth
        self.endpoint = Endpoint.parse(url, label)
        self.auth = auth
        self.client_cert = client_cert
        self.pending_retries = pending_retries
        self.max_retry_after = max_retry_after
        self.on_pending = on_pending
        self._sleep = sleep
        self.transport: Transport | CoapTransport
        if self.endpoint.scheme == "coaps":  # EST-coaps, RFC 9148: same operations, same answers
            from estkit.client.coap import CoapTransport
            self.transport = CoapTransport(self.endpoint, trust_pem=_trust_pem(trust), client_cert=client_cert,
                                           timeout=timeout)
        else:
            self.transport = Transport(self.endpoint, trust_pem=_trust_pem(trust), client_cert=client_cert,
                                       timeout=timeout)
        self._csrattrs: CsrAttrs | None = None
        self._cacerts: list[x509.Certificate] | None = None

    # -- plumbing ------------------------------------------------------------------

    def request(self, method: str, op: str, *, body_for: BodyFor | None = None, content_type: str | None = None,
                tls12: bool = False, ok: tuple[int, ...] = (200,), verify: bool = True,
                retry_on: tuple[int, ...] = (202,)) -> Response:
        """One operation: send, wait out 202s (resending the same request), and
        raise the estkit error of any other refusal."""
        attempt = 0
        while True:
            resp = self.transport.exchange(method, op, body_for=body_for, content_type=content_type,
                                           auth=self.auth, verify=verify, tls12=tls12)
            if resp.status in ok:
                return resp
            if resp.status in retry_on and (resp.status == 202 or resp.header(c.HDR_RETRY_AFTER)):
                retry = parse_retry_after(resp.header(c.HDR_RETRY_AFTER))
                if retry is None:  # RFC 7030 §4.2.3: a 202 MUST carry Retry-After
                    raise ProtocolError(f"{op}: {resp.status} without a usable Retry-After")
                err = error_from(op, resp)
                if attempt >= self.pending_retries or retry > self.max_retry_after:
                    raise err
                attempt += 1
                if self.on_pending is not None:
                    self.on_pending(PendingWait(op, attempt, retry, datetime.now(UTC) + timedelta(seconds=retry),
                                                err.reason))
                self._sleep(retry)
                continue
            raise error_from(op, resp)

    # -- RFC 7030 §4.1 and §4.5: no authentication --------------------------------

    def cacerts(self, *, bootstrap: Confirm | None = None) -> list[x509.Certificate]:
        """RFC 7030 §4.1: the CA certificates.  With ``bootstrap`` the server is
        not authenticated (§4.1.1): the answer is kept only if ``bootstrap``
        confirms its fingerprint, and then becomes this client's trust anchors."""
        resp = self.request("GET", c.OP_CACERTS, verify=bootstrap is None)
        certs = certificates(resp.body, "cacerts response")
        if bootstrap is not None:
            offer = BootstrapOffer(tuple(certs))
            if not bootstrap(offer):
                raise TrustError("bootstrap: the CA fingerprint was not confirmed "
                                 f"(offered SHA-256 {', '.join(offer.fingerprints)})")
            self.transport.trust_pem = _trust_pem(offer.anchors)
        self._cacerts = certs
        return certs

    def ca_certificates(self) -> list[x509.Certificate]:
        """The CA certificates, fetched once."""
        return self._cacerts if self._cacerts is not None else self.cacerts()

    def csrattrs(self) -> CsrAttrs:
        """RFC 7030 §4.5: what the CA wants in a request (empty on 204 or 404).
        Raises ProtocolError when the answer cannot be read."""
        if self._csrattrs is None:
            resp = self.request("GET", c.OP_CSRATTRS, ok=(200, 204, 404))
            # A body of only NULs and blanks is an empty answer (libest ends its base64 with a NUL).
            if resp.status != 200 or not resp.body.strip(b"\x00 \t\r\n"):
                self._csrattrs = CsrAttrs(())
            else:
                try:
                    self._csrattrs = decode_csrattrs(payload_der(resp.body, "csrattrs response"))
                except BadRequest as exc:
                    raise ProtocolError(exc.reason) from None
        return self._csrattrs

    def _advice(self) -> CsrAttrs:
        """/csrattrs for choosing defaults: RFC 7030 §4.5.2 makes it advice, so an
        unreadable answer (malformed, or refused by the server) is a warning and
        the defaults apply; it never stops an enrollment that can do without it.
        Network and trust failures still stop it: the enrollment would fail too."""
        try:
            return self.csrattrs()
        except EstError as exc:
            if not (isinstance(exc, ProtocolError) or exc.status >= 400):
                raise
            warnings.warn(f"unreadable /csrattrs ({exc.reason}); going on with the defaults "
                          f"(key type {DEFAULT_KEY_TYPE}, no linking)", CsrAttrsWarning, stacklevel=3)
            self._csrattrs = CsrAttrs(())  # warn once per client
            return self._csrattrs

    def key_type(self) -> str:
        """The key type /csrattrs asks for first (RFC 9908), else ``ec:P-256``."""
        wanted = key_types_from(self._advice())
        return wanted[0] if wanted else DEFAULT_KEY_TYPE

    def new_key(self, key_type: str | None = None) -> CertificateIssuerPrivateKeyTypes:
        """A new private key of ``key_type`` or of the type /csrattrs asks for."""
        return generate_key(key_type or self.key_type())

    def linking_required(self) -> bool:
        """True when /csrattrs lists challengePassword (RFC 7030 §3.5)."""
        return c.OID_CHALLENGE_PASSWORD.dotted_string in self._advice().oids()

    # -- RFC 7030 §4.2 enrollment -------------------------------------------------

    def _csr_body(self, csr: CsrInput, link: bool | None,
                  decrypt_key_id: bytes | None = None) -> tuple[BodyFor, object, bool, CertificateIssuerPrivateKeyTypes | None]:
        """``(body_for, public_key, tls12, key)`` for a request."""
        linked = self.linking_required() if link is None else link
        if isinstance(csr, bytes):
            csr = load_csr_input(csr)
        if isinstance(csr, x509.CertificateSigningRequest):
            if linked:
                raise ValueError("linking (RFC 7030 §3.5) needs the key to sign the CSR on the connection: "
                                 "pass a CsrSpec instead of a finished CSR")
            der = csr.public_bytes(Encoding.DER)
            return (lambda _tu: encode_b64(der)), csr.public_key(), False, None
        key = csr.key or self.new_key()
        spec = csr
        if not linked:
            # Built once: a 202 retry resends the very same request (§4.2.3).
            fixed = spec.build(key, decrypt_key_id=decrypt_key_id)
            return (lambda _tu: encode_b64(fixed)), key.public_key(), False, key

        def linked_body(tls_unique: bytes | None) -> bytes:
            if not tls_unique:
                raise ProtocolError("linking needs tls-unique, which exists only in TLS 1.2 (RFC 9266)")
            # Rebuilt for every connection: a new connection has a new tls-unique (§3.5).
            return encode_b64(spec.build(key, tls_unique, decrypt_key_id=decrypt_key_id))
        return linked_body, key.public_key(), True, key

    def _enroll(self, op: str, csr: CsrInput, link: bool | None) -> tuple[CertificateIssuerPrivateKeyTypes | None,
                                                                         x509.Certificate]:
        body_for, pub, tls12, key = self._csr_body(csr, link)
        resp = self.request("POST", op, body_for=body_for, content_type=c.CT_PKCS10, tls12=tls12)
        return key, issued_certificate(certificates(resp.body, f"{op} response"), pub)  # type: ignore[arg-type]

    def simpleenroll(self, csr: CsrInput, *, link: bool | None = None) -> x509.Certificate:
        """RFC 7030 §4.2.1: a certificate for ``csr`` (a finished CSR, or a
        :class:`CsrSpec` the client signs, linked when asked or when /csrattrs
        lists challengePassword)."""
        return self._enroll(c.OP_SIMPLEENROLL, csr, link)[1]

    def simplereenroll(self, csr: CsrInput, *, link: bool | None = None) -> x509.Certificate:
        """RFC 7030 §4.2.2: renew (same key) or rekey; authenticate with the
        certificate being renewed as ``client_cert``."""
        return self._enroll(c.OP_SIMPLEREENROLL, csr, link)[1]

    def enroll(self, *, cn: str | None = None, subject: x509.Name | None = None, dns: Sequence[str] = (),
               ips: Sequence[str] = (), key: CertificateIssuerPrivateKeyTypes | None = None,
               key_type: str | None = None, link: bool | None = None) -> tuple[CertificateIssuerPrivateKeyTypes,
                                                                               x509.Certificate]:
        """simpleenroll with a key of the caller's or a new one following /csrattrs: ``(key, certificate)``."""
        k = key or self.new_key(key_type)
        _k, cert = self._enroll(c.OP_SIMPLEENROLL, CsrSpec(k, cn, subject, tuple(dns), tuple(ips)), link)
        return k, cert

    def reenroll(self, *, key: CertificateIssuerPrivateKeyTypes | None = None, key_type: str | None = None,
                 link: bool | None = None) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        """simplereenroll of ``client_cert`` with its subject and SANs: with
        ``key`` (e.g. the current one: renew) or a new key of the current
        certificate's type (rekey).  Returns ``(key, certificate)``."""
        if self.client_cert is None:
            raise ValueError("reenroll authenticates with the certificate being renewed: give client_cert")
        old = self.client_cert.certificate()
        k = key or self.new_key(key_type or key_type_of(old.public_key()))
        _k, cert = self._enroll(c.OP_SIMPLEREENROLL, spec_from_certificate(old, k), link)
        return k, cert

    # -- RFC 7030 §4.4 server-side key generation ------------------------------------

    def serverkeygen(self, csr: CsrInput | None = None, *, cn: str | None = None, dns: Sequence[str] = (),
                     ips: Sequence[str] = (), encrypt: bool = False, link: bool | None = None,
                     allow_plaintext_key: bool = False) -> tuple[PrivateKeyTypes, x509.Certificate]:
        """RFC 7030 §4.4: the server makes the key.  ``encrypt`` asks for it
        encrypted to the TLS client certificate (AsymmetricDecryptKeyIdentifier,
        §4.4.1.2); an encrypted answer is opened with ``client_cert``'s key.
        With ``encrypt``, a plaintext key in the answer is a downgrade and raises
        ProtocolError unless ``allow_plaintext_key``."""
        spec = csr if csr is not None else CsrSpec(None, cn, None, tuple(dns), tuple(ips))
        key_id = None
        if encrypt:
            if self.client_cert is None or not isinstance(spec, CsrSpec):
                raise ValueError("an encrypted server key needs client_cert and a CsrSpec")
            key_id = _key_identifier(self.client_cert.certificate())
        body_for, _pub, tls12, _k = self._csr_body(spec, link, decrypt_key_id=key_id)
        resp = self.request("POST", c.OP_SERVERKEYGEN, body_for=body_for, content_type=c.CT_PKCS10, tls12=tls12)
        return read_serverkeygen(resp.body, resp.header("Content-Type"), self._open_server_key,
                                 require_encrypted=encrypt and not allow_plaintext_key)

    def _open_server_key(self, der: bytes) -> bytes:
        if self.client_cert is None:
            raise ProtocolError("the server returned an encrypted key, but there is no TLS client key to open it")
        try:
            key_der, signers = unwrap_server_key(der, self.client_cert.private_key())
        except CmsError as exc:
            raise ProtocolError(f"encrypted server key: {exc.reason}") from None
        cas = self.ca_certificates()
        if not any(s == ca or _issued_by(s, ca) for s in signers for ca in cas):
            raise ProtocolError("the encrypted server key is not signed by the EST CA")
        return key_der

    # -- RFC 7030 §4.3 full CMC (implemented in estkit.client.cmc) ----------------

    def fullcmc_enroll(self, **kw: Any) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        """Enroll through /fullcmc: see :func:`estkit.client.cmc.cmc_enroll`."""
        from estkit.client.cmc import cmc_enroll
        return cmc_enroll(self, **kw)

    def fullcmc_renew(self, **kw: Any) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        """Renew ``client_cert`` through /fullcmc: see :func:`estkit.client.cmc.cmc_renew`."""
        from estkit.client.cmc import cmc_renew
        return cmc_renew(self, **kw)

    def fullcmc_revoke(self, **kw: Any) -> None:
        """Revoke through /fullcmc: see :func:`estkit.client.cmc.cmc_revoke`."""
        from estkit.client.cmc import cmc_revoke
        cmc_revoke(self, **kw)


def _key_identifier(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # any failure: not issued by
        return False
