"""``estkit init``: a new CA, a TLS server certificate and a config file in DIR."""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.ca.create import ca_name, make_ca_certificate, make_tls_certificate
from estkit.ca.server_cert import record_own_certificate
from estkit.ca.signer import KeySigner, Signer, write_private_key
from estkit.cli.tokeninit import TokenKeys
from estkit.cli.perms import PUBLIC_MODE
from estkit.config import CONFIG_NAME
from estkit.protocol.keys import generate_key
from estkit.store import open_store

__all__ = ["TokenKeys", "init_dir", "InitError", "public_listen"]


class InitError(Exception):
    """``estkit init`` cannot proceed (e.g. a CA already exists)."""


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


CONFIG_TEMPLATE = """\
# estkit configuration (TOML).  Relative paths are relative to this directory.
# Every key is documented in the README ("Configuration").

[server]
listen = "{listen}"
tls_cert = "tls/server.pem"          # leaf first, then the chain
tls_key = "tls/server.key"
bootstrap_trust = []                 # PEM files of manufacturer (IDevID) CAs whose devices may enroll
max_body_bytes = 65536
workers = 0                          # 0: one worker process per core
default_label = "default"            # the label served at /.well-known/est/<op>
realm = "estkit"
crl_listen = "{crl_listen}"{crl_comment}
ocsp_listen = "{ocsp_listen}"               # OCSP responder, RFC 6960 (HOST:PORT; = crl_listen: same listener; empty: off)
ocsp_signer = "delegated"            # or "ca": sign OCSP responses with the CA key itself
metrics_listen = "{metrics_listen}"         # Prometheus /metrics over plain HTTP (HOST:PORT, empty: off)
coap_listen = ""                     # EST-coaps, RFC 9148: CoAP over DTLS on this UDP HOST:PORT (usual port 5684; empty: off)

[store]
url = "sqlite:///estkit.db"          # or postgresql+psycopg://user:pass@host/db

[cas.default]
cert = "{ca_cert}"
key = "{ca_key}"
chain = [{chain}]
key_passphrase_env = "{passphrase_env}"

[labels.default]
ca = "default"
validity_days = 365
key_usage = ["digital_signature"]
extended_key_usage = ["clientAuth"]
honour_san = true
allowed_key_types = ["ec:P-256", "ec:P-384", "rsa:2048", "rsa:3072", "rsa:4096", "ed25519"]
require_linking = false
{crl_url}{ocsp_url}{pkcs11}"""

PKCS11_TEMPLATE = """
[pkcs11]
module = "{module}"   # the PKCS#11 module of keys named by pkcs11: URIs
pin_env = "{pin_env}"   # the token PIN comes from this environment variable, never from this file
"""


def public_listen(url: str) -> tuple[str, str]:
    """``--public-url``: the base URL (no trailing slash) and the listening address
    derived from it (an IP literal or localhost as given, any other name: all interfaces)."""
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port or 80
    except ValueError:
        raise InitError(f"--public-url {url!r}: bad port") from None
    # RFC 5280 §4.2.1.13 / RFC 6960 Appendix A.1: relying parties fetch CRLs and
    # OCSP over plain HTTP (https would need the very status it is to check).
    if u.scheme != "http" or not u.hostname or u.path not in ("", "/") or u.query or u.fragment or u.username:
        raise InitError(f"--public-url {url!r}: expected http://HOST[:PORT] (CRLs and OCSP are served "
                        "over plain HTTP)")
    host = u.hostname
    try:
        ip = ipaddress.ip_address(host)
        listen_host = f"[{ip}]" if ip.version == 6 else str(ip)
    except ValueError:
        listen_host = "127.0.0.1" if host == "localhost" else "0.0.0.0"
    base = f"http://{'[' + host + ']' if ':' in host else host}{'' if port == 80 else f':{port}'}"
    return base, f"{listen_host}:{port}"


def init_dir(directory: Path, *, key_type: str = "ec:P-256", intermediate: bool = False,
             hostnames: Sequence[str] = (), common_name: str = "estkit Root CA",
             passphrase_env: str = "", listen: str = "127.0.0.1:8443", crl_listen: str = "",
             public_url: str = "", metrics_listen: str = "", token: TokenKeys | None = None) -> list[Path]:
    """Create everything ``estkit serve`` needs in ``directory``; refuses to
    touch an existing CA.  Returns the files written.  With ``public_url``
    (http://HOST[:PORT]) the CRL listener and the OCSP responder are turned on
    there (one listener), and issued certificates, the TLS server's included, point to them.
    With ``token`` the CA keys are in a PKCS#11 token (generated there, or an existing one)
    and config.toml names them by URI: no CA key is ever written to ``directory``."""
    ocsp_listen = crl_base = ""
    if public_url:
        crl_base, derived = public_listen(public_url)
        crl_listen = ocsp_listen = crl_listen or derived
    elif crl_listen:
        crl_base = f"http://{crl_listen}"
    crl_url = f"{crl_base}/crl/default.crl" if crl_base else ""
    ocsp_url = f"{crl_base}/ocsp" if public_url else ""
    if (directory / "ca").exists() or (directory / CONFIG_NAME).exists():
        raise InitError(f"{directory} already holds a CA; refusing to overwrite it")
    passphrase = None
    if token is not None and passphrase_env:
        raise InitError("--passphrase-env protects key files; a token's keys are protected by its PIN")
    if token is not None:
        token.check(key_type, intermediate)
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if not value:
            raise InitError(f"environment variable {passphrase_env} (the CA key passphrase) is not set")
        passphrase = value.encode()
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def new_key(name: str) -> tuple[Signer, str]:
        """A CA key: in the token, or a new key file under ca/; (its signer, its config value)."""
        if token is not None:
            return token.key(name, key_type)
        key = generate_key(key_type)
        write_private_key(directory / f"ca/{name}.key", key, passphrase)
        written.append(directory / f"ca/{name}.key")
        return KeySigner(key), f"ca/{name}.key"

    root_signer, ca_key = new_key("root")
    root = make_ca_certificate(ca_name(common_name), root_signer.public_key(), root_signer,
                               path_length=1)  # room for an intermediate or a rollover link certificate
    _write(directory / "ca/root.pem", _pem(root))
    written += [directory / "ca/root.pem"]
    issuer, issuer_signer = root, root_signer
    ca_cert, chain = "ca/root.pem", ""
    if intermediate:
        sub_signer, ca_key = new_key("issuing")
        sub = make_ca_certificate(ca_name(common_name.replace("Root", "Issuing")
                                          if "Root" in common_name else common_name + " Issuing"),
                                  sub_signer.public_key(), root_signer, issuer=root, path_length=0)
        _write(directory / "ca/issuing.pem", _pem(sub))
        written += [directory / "ca/issuing.pem"]
        issuer, issuer_signer = sub, sub_signer
        ca_cert, chain = "ca/issuing.pem", '"ca/root.pem"'

    names = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", *hostnames]))
    tls_key = generate_key("ec:P-256")
    tls_cert = make_tls_certificate(tls_key, issuer, issuer_signer, names,  # without --public-url: as before
                                    crl_url=crl_url if public_url else None, ocsp_url=ocsp_url or None)
    write_private_key(directory / "tls/server.key", tls_key)
    _write(directory / "tls/server.pem", _pem(tls_cert, *([issuer] if intermediate else [])))
    _write(directory / "ca.pem", _pem(root), PUBLIC_MODE)
    os.chmod(directory / "ca.pem", PUBLIC_MODE)  # what clients trust: readable whatever the umask
    written += [directory / "tls/server.key", directory / "tls/server.pem", directory / "ca.pem"]

    _write(directory / CONFIG_NAME, CONFIG_TEMPLATE.format(
        listen=listen, ca_cert=ca_cert, ca_key=ca_key, chain=chain, passphrase_env=passphrase_env,
        crl_listen=crl_listen, ocsp_listen=ocsp_listen, metrics_listen=metrics_listen,
        crl_comment="               # plain-HTTP CRL listener (HOST:PORT, empty: off)",
        crl_url=(f'crl_url = "{crl_url}"   # CRL Distribution Point of issued certs\n' if crl_url else ""),
        ocsp_url=(f'ocsp_url = "{ocsp_url}"   # OCSP responder in issued certs (AIA)\n' if ocsp_url else ""),
        pkcs11=(PKCS11_TEMPLATE.format(module=token.settings.module, pin_env=token.settings.pin_env)
                if token is not None else "")
    ).encode())
    written.append(directory / CONFIG_NAME)

    # Every certificate this CA signs is recorded, the server's own included.
    store = open_store(os.environ.get("ESTKIT_STORE_URL")
                       or "sqlite:///" + str((directory / "estkit.db").resolve()))
    record_own_certificate(store, tls_cert, ca="default", requester="estkit init", detail="TLS server certificate")
    store.close()
    written.append(directory / "estkit.db")
    return written
