"""The options ``estclient`` commands share, as typed values.

``server_options`` gathers how to reach and authenticate to the server into a
:class:`ConnectionOptions`; ``spec_options`` gathers what to ask for and where
to write it into a :class:`SpecOptions`.  A command receives them as two
keyword arguments, ``conn`` and ``spec``, instead of a bag of names.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes

from estkit.client import ClientCertificate, CsrSpec, EstClient, PasswordAuth, PendingWait
from estkit.client.csrspec import load_csr_input
from estkit.protocol.keys import check_key_type_name, signing_key

__all__ = ["ConnectionOptions", "SpecOptions", "server_options", "spec_options", "make_client", "build_spec",
           "save_pair", "write_out", "cert_bytes", "key_bytes", "load_key"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ConnectionOptions:
    """Where the server is and how to authenticate to it (``server_options``)."""

    server: str
    label: str | None = None
    trust: str | None = None
    user: str | None = None
    password_stdin: bool = False
    password_env: str = "ESTCLIENT_PASSWORD"
    auth_scheme: str = "any"
    cert: str | None = None
    key: str | None = None
    retries: int = 5
    max_wait: int = 3600
    timeout: float = 30.0

    def with_certificate(self, cert: Path, key: Path) -> ConnectionOptions:
        """The same, authenticating with another certificate and key."""
        return dataclasses.replace(self, cert=str(cert), key=str(key))


@dataclass(frozen=True)
class SpecOptions:
    """What to ask for and where to write the result (``spec_options``)."""

    csr_file: str | None = None
    cn: str | None = None
    dns: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    csr_key: str | None = None
    key_type: str | None = None
    pop: bool | None = None
    key_out: str | None = None
    cert_out: str | None = None
    fmt: str = "pem"

    @property
    def names_given(self) -> bool:
        """Whether --cn, --dns or --ip say what to ask for."""
        return bool(self.cn or self.dns or self.ip)


def _gather(f: F, into: str, cls: type[Any], opts: list[Callable[[F], F]]) -> F:
    """Wrap ``f`` so that the options ``opts`` arrive as one ``cls`` value named ``into``."""
    names = [fld.name for fld in dataclasses.fields(cls)]

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value = cls(**{n: kwargs.pop(n) for n in names})
        return f(*args, **{into: value}, **kwargs)

    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper  # type: ignore[return-value]


def server_options(f: F) -> F:
    """Options every subcommand shares, passed as ``conn: ConnectionOptions``."""
    return _gather(f, "conn", ConnectionOptions, [
        click.option("--server", "server", envvar="ESTCLIENT_SERVER", required=True, metavar="URL",
                     help="EST server, https://host[:port][/path], or coaps://host[:port] for EST-coaps "
                          "(RFC 9148) ($ESTCLIENT_SERVER)."),
        click.option("--label", default=None, help="CA label (RFC 7030 §3.2.2)."),
        click.option("--trust", type=click.Path(exists=True, dir_okay=False), envvar="ESTCLIENT_TRUST",
                     help="Trust anchors, PEM ($ESTCLIENT_TRUST); default: the system store."),
        click.option("--user", default=None, help="User name for HTTP Basic/Digest."),
        click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin."),
        click.option("--password-env", default="ESTCLIENT_PASSWORD", show_default=True, metavar="VAR",
                     help="Environment variable holding the password."),
        click.option("--auth-scheme", type=click.Choice(["any", "basic", "digest"]), default="any",
                     show_default=True, help="Which HTTP challenge to answer."),
        click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="TLS client certificate (PEM)."),
        click.option("--key", type=click.Path(exists=True, dir_okay=False), help="TLS client key (PEM)."),
        click.option("--retries", default=5, show_default=True, help="How often to wait out a 202 and resend."),
        click.option("--max-wait", default=3600, show_default=True, metavar="SECONDS",
                     help="Longest Retry-After to wait out."),
        click.option("--timeout", default=30.0, show_default=True, help="Network timeout in seconds."),
    ])


def spec_options(f: F) -> F:
    """How to say what to ask for, passed as ``spec: SpecOptions``."""
    return _gather(f, "spec", SpecOptions, [
        click.option("--csr", "csr_file", type=click.Path(exists=True, dir_okay=False),
                     help="A finished CSR (PEM, DER or base64) instead of --cn/--dns/--ip."),
        click.option("--cn", default=None, help="Subject common name of the CSR to build."),
        click.option("--dns", multiple=True, help="subjectAltName DNS name; repeatable."),
        click.option("--ip", multiple=True, help="subjectAltName IP address; repeatable."),
        click.option("--csr-key", type=click.Path(exists=True, dir_okay=False),
                     help="Sign the built CSR with this existing key (default: a new key as /csrattrs asks)."),
        click.option("--key-type", default=None, help="Type of a new key: ec:P-256, ec:P-384, rsa:2048, ed25519..."),
        click.option("--pop/--no-pop", "pop", default=None,
                     help="Link the CSR to the TLS session (RFC 7030 §3.5); default: when /csrattrs asks."),
        click.option("--key-out", default=None, metavar="FILE", help="Where to write the private key (mode 0600)."),
        click.option("--cert-out", default=None, metavar="FILE", help="Where to write the certificate (default stdout)."),
        click.option("--format", "fmt", type=click.Choice(["pem", "der"]), default="pem", show_default=True),
    ])


def _show_pending(w: PendingWait) -> None:
    click.echo(f"{w.reason}; waiting {w.retry_after} s, until "
               f"{w.until.strftime('%Y-%m-%d %H:%M:%S UTC')} (attempt {w.attempt})", err=True)


def make_client(conn: ConnectionOptions, *, trust_override: bool = False) -> EstClient:
    """An EstClient from the shared options."""
    auth: PasswordAuth | None = None
    if conn.user:
        if conn.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif os.environ.get(conn.password_env) is not None:
            password = os.environ[conn.password_env]
        else:
            raise click.UsageError(f"--user needs a password: --password-stdin or ${conn.password_env}")
        schemes = ("digest", "basic") if conn.auth_scheme == "any" else (conn.auth_scheme,)
        auth = PasswordAuth(conn.user, password, schemes)
    if bool(conn.cert) != bool(conn.key):
        raise click.UsageError("--cert and --key go together")
    client_cert = ClientCertificate(Path(conn.cert), Path(conn.key)) if conn.cert and conn.key else None
    return EstClient(conn.server, trust=None if trust_override else conn.trust, label=conn.label, auth=auth,
                     client_cert=client_cert, timeout=conn.timeout, pending_retries=conn.retries,
                     max_retry_after=conn.max_wait, on_pending=_show_pending)


def write_out(path: str | None, data: bytes, *, private: bool = False) -> None:
    """Write a file atomically (temporary file, fsync, rename); ``-`` or None is stdout."""
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)


def cert_bytes(cert: x509.Certificate, fmt: str) -> bytes:
    """A certificate as PEM or DER."""
    return cert.public_bytes(serialization.Encoding.PEM if fmt == "pem" else serialization.Encoding.DER)


def key_bytes(key: PrivateKeyTypes, fmt: str) -> bytes:
    """A private key as PKCS#8 PEM or DER, unencrypted (the file is mode 0600)."""
    return key.private_bytes(serialization.Encoding.PEM if fmt == "pem" else serialization.Encoding.DER,
                             serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_key(path: str) -> CertificateIssuerPrivateKeyTypes:
    """A private key that can sign a CSR, from a PEM or DER file."""
    data = Path(path).read_bytes()
    try:
        key = (serialization.load_pem_private_key(data, None) if b"-----BEGIN" in data
               else serialization.load_der_private_key(data, None))
    except (ValueError, TypeError) as exc:
        raise click.UsageError(f"{path}: not an unencrypted private key ({exc})") from None
    try:
        return signing_key(key)
    except ValueError as exc:
        raise click.UsageError(f"{path}: {exc}") from None


def build_spec(spec: SpecOptions, client: EstClient
               ) -> tuple[CsrSpec | x509.CertificateSigningRequest, CertificateIssuerPrivateKeyTypes | None]:
    """The CSR to send and the key it is for (None for a finished CSR)."""
    if spec.csr_file:
        if spec.names_given or spec.csr_key:
            raise click.UsageError("--csr excludes --cn, --dns, --ip and --csr-key")
        return load_csr_input(Path(spec.csr_file).read_bytes()), None
    if not spec.names_given:
        raise click.UsageError("say what to ask for: --csr FILE, or --cn/--dns/--ip")
    key = (load_key(spec.csr_key) if spec.csr_key
           else client.new_key(check_key_type_name(spec.key_type) if spec.key_type else None))
    return CsrSpec(key, spec.cn, None, spec.dns, spec.ip), key


def save_pair(spec: SpecOptions, key: PrivateKeyTypes | None, cert: x509.Certificate, *, new_key: bool) -> None:
    """Write --key-out (when the key is new) and --cert-out (or stdout)."""
    if key is not None and new_key:
        if not spec.key_out:
            raise click.UsageError("a new key was made: give --key-out FILE to keep it")
        write_out(spec.key_out, key_bytes(key, spec.fmt), private=True)
    write_out(spec.cert_out, cert_bytes(cert, spec.fmt))
