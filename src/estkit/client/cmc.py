"""Full CMC from the client (RFC 7030 §4.3, RFC 5272): enroll, renew with the
existing certificate, revoke.  Requests are built and responses read by
:mod:`estkit.protocol.cmc_client`; here they are sent and their outcome
turned into a certificate or an estkit error."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from estkit.client.client import EstClient
from estkit.client.csrspec import CsrSpec, spec_from_certificate
from estkit.client.errors import ProtocolError
from estkit.client.responses import error_from, parse_retry_after, payload_der
from estkit.errors import BadRequest, error_for_status
from estkit.protocol import constants as c
from estkit.protocol.cmc import SUCCESS, RequestKind, TaggedRequest, ctl_revoke_request, fail_name
from estkit.protocol.cmc_client import CmcReply, CmcRequest, build_cmc_request, parse_cmc_response
from estkit.protocol.cmc_crmf import build_crmf
from estkit.protocol.framing import encode_b64, media_type

__all__ = ["cmc_enroll", "cmc_renew", "cmc_revoke", "REVOCATION_REASONS"]

# RFC 5280 §5.3.1 CRLReason codes a revokeRequest may carry (removeFromCRL is a
# CRL entry's, not a request's).
REVOCATION_REASONS = {name: code for name, code in c.CRL_REASONS.items() if name != "removeFromCRL"}


def _send(client: EstClient, req: CmcRequest) -> CmcReply:
    resp = client.request("POST", c.OP_FULLCMC, body_for=lambda _tu: encode_b64(req.der),
                          content_type=c.CT_CMC_REQUEST, ok=tuple(s for s in range(200, 600) if s not in (202, 503)),
                          retry_on=(202, 503))
    if media_type(resp.header("Content-Type")) != c.CT_PKCS7:
        if resp.status == 200:
            raise ProtocolError(f"fullcmc: response is {resp.header('Content-Type')}, not a CMC response")
        raise error_from(c.OP_FULLCMC, resp)
    try:
        reply = parse_cmc_response(payload_der(resp.body, "fullcmc response"), trusted=client.ca_certificates())
    except BadRequest as exc:
        raise ProtocolError(f"fullcmc response: {exc.reason}") from None
    # RFC 5272 §6.6, §6.7: the transactionId is echoed and our nonce comes back as recipientNonce.
    if reply.transaction_id not in (None, req.transaction_id) or reply.recipient_nonce not in (None, req.sender_nonce):
        raise ProtocolError("fullcmc response does not echo our transactionId and senderNonce")
    failed = [s for s in reply.statuses if s.status != SUCCESS]
    if resp.status != 200 or failed:
        s = failed[0] if failed else None
        why = f"{fail_name(s.fail_info)}: {s.status_string or ''}".rstrip(": ") if s else f"HTTP {resp.status}"
        raise error_for_status(resp.status if resp.status != 200 else 400, f"fullcmc: {why}",
                               parse_retry_after(resp.header(c.HDR_RETRY_AFTER)))
    return reply


def _certified(reply: CmcReply, key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    cert = reply.certificate_for(key.public_key())
    if cert is None:
        raise ProtocolError("fullcmc response carries no certificate for our key")
    return cert


def _tagged(spec: CsrSpec, key: CertificateIssuerPrivateKeyTypes, crmf: bool) -> TaggedRequest:
    if crmf:
        subject = spec.subject or x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, spec.cn)] if spec.cn else [])
        return TaggedRequest(1, RequestKind.CRM, build_crmf(key, cert_req_id=1, subject=subject, dns=spec.dns))
    return TaggedRequest(1, RequestKind.TCR, spec.build(key))


def cmc_enroll(client: EstClient, *, cn: str | None = None, subject: x509.Name | None = None,
               dns: Sequence[str] = (), ips: Sequence[str] = (), key: CertificateIssuerPrivateKeyTypes | None = None,
               shared_secret: bytes | None = None, identification: str | None = None,
               crmf: bool = False) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """Initial enrollment through /fullcmc: a PKCS#10 (or CRMF) request in a
    PKIData signed by the new key, authenticated by the client's HTTP or TLS
    credentials or by ``shared_secret`` (identityProofV2, RFC 5272 §6.2.3)."""
    k = key or client.new_key()
    spec = CsrSpec(k, cn, subject, tuple(dns), tuple(ips))
    req = build_cmc_request(k, requests=[_tagged(spec, k, crmf)], shared_secret=shared_secret,
                            identification=identification)
    return k, _certified(_send(client, req), k)


def _current(client: EstClient) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    if client.client_cert is None:
        raise ValueError("renewal and revocation are signed by the existing certificate: give client_cert")
    key = client.client_cert.private_key()
    return client.client_cert.certificate(), key


def cmc_renew(client: EstClient, *, key: CertificateIssuerPrivateKeyTypes | None = None,
              crmf: bool = False) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """Renew ``client_cert`` through /fullcmc: the request is signed by the
    existing certificate (RFC 7030 §4.3), same subject and SANs, with ``key``
    or a new key of the same type."""
    from estkit.protocol.keys import key_type_of
    old, old_key = _current(client)
    k = key or client.new_key(key_type_of(old.public_key()))
    req = build_cmc_request(old_key, requests=[_tagged(spec_from_certificate(old, k), k, crmf)], signer_cert=old)
    return k, _certified(_send(client, req), k)


def cmc_revoke(client: EstClient, *, serial: int | None = None, reason: int = 0) -> None:
    """Revoke a certificate (``client_cert`` itself by default) with a CMC
    revokeRequest (RFC 5272 §6.11), signed by ``client_cert``."""
    cert, key = _current(client)
    ctl = ctl_revoke_request(1, cert.issuer, serial if serial is not None else cert.serial_number, reason)
    _send(client, build_cmc_request(key, controls=[ctl], signer_cert=cert))
