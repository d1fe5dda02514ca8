"""Build the CA, the store and the server from a validated configuration."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography import x509

from estkit.ca.authority import CertificateAuthority, IssuingCA
from estkit.ca.authz import Authorize
from estkit.ca.identity import RequestContext
from estkit.ca.ports import utc_now
from estkit.ca.ocsp import OcspResponder
from estkit.ca.ocsp_signer import ResponderKeys
from estkit.ca.passwords import VerifyCache
from estkit.ca.revocation import Revocation
from estkit.ca.pkcs11_uri import Pkcs11Uri, is_pkcs11_uri
from estkit.ca.signer import Signer, load_signer
from estkit.config import CaConfig, Config, ConfigError
from estkit.server.app import EstServer
from estkit.server.health import Readiness
from estkit.server.handlers import register_core
from estkit.server.throttle import FailureThrottle, Rule
from estkit.store import PoolOptions, SqlStore, open_store

__all__ = ["ca_signer", "load_pem_certs", "build_store", "build_authority", "build_server", "passphrase_for",
           "build_revocation", "load_cmc_secrets", "password_verifier", "build_ocsp"]

log = logging.getLogger("estkit")


def load_pem_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read certificates: {exc}") from None
    return certs


def passphrase_for(ca: CaConfig) -> bytes | None:
    """The CA key's passphrase from the environment variable the config names."""
    if not ca.key_passphrase_env:
        return None
    value = os.environ.get(ca.key_passphrase_env)
    if value is None:
        raise ConfigError(f"'cas.{ca.name}.key_passphrase_env': environment variable "
                          f"{ca.key_passphrase_env} is not set")
    return value.encode()


def build_store(config: Config) -> SqlStore:
    """The store named by the config, migrated to the newest schema."""
    sc = config.store
    return open_store(config.store_url, clock=utc_now,
                      pool=PoolOptions(size=sc.pool_size, max_overflow=sc.pool_max_overflow,
                                       timeout=sc.pool_timeout_seconds, connect_timeout=sc.connect_timeout_seconds))


def password_verifier(config: Config, workers: int = 1) -> VerifyCache:
    """The password checks of one worker: ``server.auth_max_parallel`` scrypts at
    once (0: the cores shared among the workers), each holding 16 MiB."""
    n = config.server.auth_max_parallel or max(1, (os.cpu_count() or 1) // max(1, workers))
    return VerifyCache(max_parallel=n)


def ca_signer(config: Config, cc: CaConfig, cert: x509.Certificate) -> Signer:
    """The signer of ``[cas.NAME]``: its key file, or the token object its PKCS#11 URI
    names (logged in and probed now, so that a wrong PIN or a missing key stops here
    with one line naming the URI).  Checked against the CA certificate either way."""
    if is_pkcs11_uri(cc.key):
        from estkit.ca.pkcs11 import Pkcs11Signer, TokenError
        try:
            token_signer = Pkcs11Signer(Pkcs11Uri.parse(cc.key), config.pkcs11, cert.public_key(),  # type: ignore[arg-type]
                                        pss=cc.rsa_pss)
            token_signer.probe()
        except (TokenError, ValueError) as exc:
            raise ConfigError(f"'cas.{cc.name}.key': {exc}") from None
        return token_signer
    try:
        signer = load_signer(config.path(cc.key), passphrase_for(cc), pss=cc.rsa_pss)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"'cas.{cc.name}.key': {exc}") from None
    if signer.public_key() != cert.public_key():
        raise ConfigError(f"'cas.{cc.name}': the key does not match the certificate {cc.cert}")
    return signer


def build_authority(config: Config, store: SqlStore | None = None, *, workers: int = 1) -> CertificateAuthority:
    """The CA with every configured issuing CA and label (``workers``: how many
    server processes will share the machine's cores)."""
    cas: dict[str, IssuingCA] = {}
    for name, cc in config.cas.items():
        certs = load_pem_certs(config.path(cc.cert))
        chain = [c for p in cc.chain for c in load_pem_certs(config.path(p))]
        signer = ca_signer(config, cc, certs[0])
        extra = [c for p in cc.extra_certs for c in load_pem_certs(config.path(p))]
        cas[name] = IssuingCA(name=name, cert=certs[0], signer=signer, chain=tuple(certs[1:] + chain),
                              extra=tuple(extra))
    return CertificateAuthority(cas, config.labels, store or build_store(config),
                                default_label=config.server.default_label,
                                authorize=Authorize(config.policies), clock=utc_now,
                                passwords=password_verifier(config, workers))


def build_server(config: Config, ca: CertificateAuthority, revocation: Revocation | None = None) -> EstServer:
    """The EST server with every operation this build offers; ``revocation``
    is the process's one Revocation (the CRL listener shares it), else built here."""
    server = EstServer(ca, realm=config.server.realm, max_body=config.server.max_body_bytes,
                       access_log=config.server.access_log, body_timeout=config.server.body_timeout_seconds,
                       readiness=Readiness(ca))
    register_core(server)
    sc = config.server
    server.auth.throttle = FailureThrottle(
        Rule("auth_address_failures_per_minute", sc.auth_address_failures_per_minute),
        Rule("auth_user_failures_per_minute", sc.auth_user_failures_per_minute))
    if config.server.bootstrap_trust and not any(not p.kinds or "bootstrap" in p.kinds for p in config.policies):
        log.warning("server.bootstrap_trust is set but no [policies.NAME] applies to bootstrap identities: "
                    "any device of those manufacturers may request any name (docs/policy.md)")
    ra_labels = [name for name, p in config.labels.items() if p.issues_ra]
    if ra_labels and not any(not p.kinds or "ra" in p.kinds for p in config.policies):
        log.warning("label(s) %s issue RA certificates (id-kp-cmcRA) but no [policies.NAME] applies to kind "
                    "'ra': RA certificates get no RA powers, only their own names, until a policy grants them "
                    "(docs/policy.md)", ", ".join(ra_labels))
    if any(p.digest_auth for p in config.labels.values()):
        from estkit.server.digest import DigestAuth, load_secret
        digest = DigestAuth(ca, config.server.realm, load_secret(config.dir), guard=server.auth)
        server.auth.extra.append(digest.authenticate)
        server.auth.challenge_hooks.append(digest.challenges)
    from estkit.ca.cmc import CmcService
    from estkit.ca.keygen import ServerKeyGen
    from estkit.server.handlers_cmc import register_cmc
    from estkit.server.handlers_keygen import register_keygen
    register_keygen(server, ServerKeyGen(ca))
    revocation = revocation if revocation is not None else build_revocation(ca)

    def supersede(serial: int, ctx: RequestContext) -> None:  # revoke_superseded labels (RFC 5280 §5.3.1)
        revocation.revoke(serial, "superseded", identity=str(ctx.identity), peer=ctx.peer)
    ca.supersede = supersede
    register_cmc(server, CmcService(ca, revocation, load_cmc_secrets(config)))
    return server


def build_revocation(ca: CertificateAuthority) -> Revocation:
    """Revocation and CRLs for the CA."""
    return Revocation(ca)


def build_ocsp(config: Config, ca: CertificateAuthority) -> tuple[OcspResponder, ResponderKeys]:
    """The OCSP responder and its signing keys, current (delegated responder
    certificates issued or renewed now, before any worker forks)."""
    from datetime import timedelta
    keys = ResponderKeys(ca, config.dir / "ocsp", config.server.ocsp_signer)
    try:
        keys.refresh()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"'server.ocsp_signer': {exc}") from None
    return OcspResponder(ca, keys.get, next_update=timedelta(seconds=config.server.ocsp_next_update_seconds)), keys


def load_cmc_secrets(config: Config) -> dict[str, dict[str, bytes]]:
    """Each label's identityProofV2 shared secrets from its ``cmc_secrets_file``
    (lines ``identification:secret``; ``#`` starts a comment)."""
    out: dict[str, dict[str, bytes]] = {}
    for name, p in config.labels.items():
        if not p.cmc_secrets_file:
            continue
        path = config.path(p.cmc_secrets_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"'labels.{name}.cmc_secrets_file': {exc}") from None
        secrets: dict[str, bytes] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            ident, sep, secret = line.partition(":")
            if not sep or not secret:
                raise ConfigError(f"{path}:{n}: expected 'identification:secret'")
            secrets[ident.strip()] = secret.encode()
        out[name] = secrets
    return out
