"""Client authentication: HTTP Basic and Digest answers to a 401 challenge
(RFC 7030 §3.2.3, RFC 7617, RFC 7616) and TLS client certificates (§3.3.2).

Credentials are only ever sent on a connection whose server certificate was
verified (RFC 7030 §3.6); the transport enforces that, these classes only
compute header values.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from estkit.client.errors import ClientError
from estkit.protocol.keys import signing_key

__all__ = ["Challenge", "parse_challenges", "PasswordAuth", "BasicAuth", "DigestAuth", "ClientCertificate",
           "digest_response", "DIGEST_ALGORITHMS"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_T68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: the scheme (lower case) and its parameters."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str, default: str | None = None) -> str | None:
        """A parameter by name (case-insensitive)."""
        return next((v for k, v in self.params if k == name.lower()), default)


def _quoted(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    i += 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), i + 1


def parse_challenges(values: Sequence[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` values (RFC 7235 §4.1:
    several challenges may share one header, separated by commas)."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for text in values:
        i, n = 0, len(text)
        while i < n:
            if text[i] in " \t,":
                i += 1
                continue
            m = _TOKEN.match(text, i)
            if m is None:
                i += 1
                continue
            k = m.end()
            while k < n and text[k] in " \t":
                k += 1
            if k < n and text[k] == "=" and out:
                k += 1
                while k < n and text[k] in " \t":
                    k += 1
                if k < n and text[k] == '"':
                    value, i = _quoted(text, k)
                else:
                    vm = _T68.match(text, k)
                    value, i = (vm.group(), vm.end()) if vm else ("", k)
                out[-1][1].append((m.group().lower(), value))
            else:
                out.append((m.group().lower(), []))
                i = k
    return [Challenge(s, tuple(p)) for s, p in out]


def _sha512_256(data: bytes) -> str:
    return hashlib.new("sha512_256", data).hexdigest()


# RFC 7616 §3.2: the algorithms a client is to support; the strongest offered wins.
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


DIGEST_ALGORITHMS: dict[str, Callable[[bytes], str]] = {"SHA-512-256": _sha512_256, "SHA-256": _sha256, "MD5": _md5}


def digest_response(ch: Challenge, *, user: str, password: str, method: str, uri: str, body: bytes = b"",
                    cnonce: str | None = None, nc: int = 1) -> str:
    """The ``Authorization: Digest ...`` value answering ``ch`` (RFC 7616 §3.4)."""
    alg_name = (ch.param("algorithm") or "MD5").upper()
    sess = alg_name.endswith("-SESS")
    base = alg_name[:-5] if sess else alg_name
    if base not in DIGEST_ALGORITHMS:
        raise ValueError(f"unsupported Digest algorithm {alg_name}")
    h = DIGEST_ALGORITHMS[base]
    realm, nonce = ch.param("realm", "") or "", ch.param("nonce", "") or ""
    cn = cnonce or secrets.token_urlsafe(24)
    ncv = f"{nc:08x}"
    ha1 = h(f"{user}:{realm}:{password}".encode())
    if sess:  # RFC 7616 §3.4.2
        ha1 = h(f"{ha1}:{nonce}:{cn}".encode())
    offered = [q.strip().lower() for q in (ch.param("qop") or "").split(",") if q.strip()]
    qop = "auth" if "auth" in offered or not offered else ("auth-int" if "auth-int" in offered else "")
    if not qop:
        raise ValueError(f"unsupported Digest qop {ch.param('qop')!r}")
    a2 = f"{method}:{uri}" + (f":{h(body)}" if qop == "auth-int" else "")
    if offered:
        resp = h(f"{ha1}:{nonce}:{ncv}:{cn}:{qop}:{h(a2.encode())}".encode())
    else:  # RFC 2069 form: a server that offers no qop
        resp = h(f"{ha1}:{nonce}:{h(a2.encode())}".encode())
    parts = [f'username="{_esc(user)}"', f'realm="{_esc(realm)}"', f'uri="{_esc(uri)}"', f"algorithm={alg_name}",
             f'nonce="{_esc(nonce)}"']
    if offered:
        parts += [f"nc={ncv}", f'cnonce="{cn}"', f"qop={qop}"]
    parts.append(f'response="{resp}"')
    if ch.param("opaque") is not None:
        parts.append(f'opaque="{_esc(ch.param("opaque") or "")}"')
    return "Digest " + ", ".join(parts)


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True)
class PasswordAuth:
    """A user name and password that answer the server's 401 challenge with
    whichever of ``schemes`` it offers (Digest preferred, RFC 7616, then
    Basic, RFC 7617).  ``preemptive`` sends Basic on the first request
    (saves a round trip; libest's server expects the challenge first)."""

    user: str
    password: str = field(repr=False)
    schemes: tuple[str, ...] = ("digest", "basic")
    preemptive: bool = False

    def basic(self) -> str:
        """The ``Authorization: Basic`` value."""
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    def choose(self, challenges: Sequence[Challenge]) -> Challenge | None:
        """The challenge to answer, or None when none is of a scheme we use."""
        for scheme in self.schemes:
            offers = [c for c in challenges if c.scheme == scheme]
            if scheme == "digest":
                offers = [c for c in offers if _digest_usable(c)]
                offers.sort(key=_digest_strength)
            if offers:
                return offers[0]
        return None

    def answer(self, ch: Challenge, *, method: str, uri: str, body: bytes) -> str:
        """The Authorization value for a chosen challenge."""
        if ch.scheme == "basic":
            return self.basic()
        return digest_response(ch, user=self.user, password=self.password, method=method, uri=uri, body=body)


def _digest_usable(c: Challenge) -> bool:
    alg = (c.param("algorithm") or "MD5").upper().removesuffix("-SESS")
    qops = {q.strip().lower() for q in (c.param("qop") or "auth").split(",")}
    return alg in DIGEST_ALGORITHMS and bool(qops & {"auth", "auth-int"}) and bool(c.param("nonce"))


def _digest_strength(c: Challenge) -> int:
    alg = (c.param("algorithm") or "MD5").upper().removesuffix("-SESS")
    return list(DIGEST_ALGORITHMS).index(alg)


def BasicAuth(user: str, password: str, *, preemptive: bool = False) -> PasswordAuth:  # noqa: N802
    """Answer only HTTP Basic challenges (RFC 7617)."""
    return PasswordAuth(user, password, ("basic",), preemptive)


def DigestAuth(user: str, password: str) -> PasswordAuth:  # noqa: N802
    """Answer only HTTP Digest challenges (RFC 7616: SHA-512-256, SHA-256, MD5, -sess, qop=auth)."""
    return PasswordAuth(user, password, ("digest",))


@dataclass(frozen=True)
class ClientCertificate:
    """A TLS client certificate and its key, as PEM files (RFC 7030 §3.3.2);
    for /simplereenroll the certificate being renewed (§4.2.2)."""

    cert_file: Path
    key_file: Path
    key_password: bytes | None = field(default=None, repr=False)

    def certificate(self) -> x509.Certificate:
        """The (first) certificate of ``cert_file``."""
        return x509.load_pem_x509_certificates(Path(self.cert_file).read_bytes())[0]

    def private_key(self) -> CertificateIssuerPrivateKeyTypes:
        """The key of ``key_file`` (a TLS client key: one that signs)."""
        key = load_pem_private_key(Path(self.key_file).read_bytes(), self.key_password)
        try:
            return signing_key(key)
        except ValueError as exc:
            raise ClientError(f"{self.key_file}: {exc}") from None
