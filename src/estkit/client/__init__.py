"""The estkit EST client library (RFC 7030, RFC 8951).

    from estkit.client import EstClient, BasicAuth
    client = EstClient("https://est.example.com", trust="ca.pem", auth=BasicAuth("dev1", password))
    key, cert = client.enroll(cn="dev1", dns=["dev1.example.com"])

See docs/client.md.
"""

from estkit.client.auth import BasicAuth, Challenge, ClientCertificate, DigestAuth, PasswordAuth, parse_challenges
from estkit.client.bootstrap import BootstrapOffer, confirm_fingerprint, sha256_fingerprint
from estkit.client.client import DEFAULT_KEY_TYPE, EstClient, PendingWait
from estkit.client.cmc import REVOCATION_REASONS, cmc_enroll, cmc_renew, cmc_revoke
from estkit.client.credentials import CredentialDir, remaining_fraction, renewal_due
from estkit.client.csrspec import CsrSpec
from estkit.client.errors import ClientError, CsrAttrsWarning, NetworkError, ProtocolError, TrustError
from estkit.errors import EstError

__all__ = [
    "EstClient", "PendingWait", "DEFAULT_KEY_TYPE", "CsrSpec",
    "PasswordAuth", "BasicAuth", "DigestAuth", "ClientCertificate", "Challenge", "parse_challenges",
    "BootstrapOffer", "confirm_fingerprint", "sha256_fingerprint",
    "cmc_enroll", "cmc_renew", "cmc_revoke", "REVOCATION_REASONS",
    "CredentialDir", "renewal_due", "remaining_fraction",
    "EstError", "ClientError", "NetworkError", "ProtocolError", "TrustError", "CsrAttrsWarning",
]
