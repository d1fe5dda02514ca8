"""``estclient``: the EST client on the command line (docs/client.md).

Exit codes: 0 success (``renew``: also nothing due), 1 other failure (a
malformed answer, a file), 2 usage, 3 authentication failed (401), 4 refused
by the server (other 4xx/5xx), 5 network failure, 6 server not trusted (or a
bootstrap fingerprint not confirmed), 7 still pending (202) after the retries.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from estkit.client import (BootstrapOffer, ClientCertificate, CsrSpec, EstClient, PasswordAuth, PendingWait,
                           confirm_fingerprint)
from estkit.client.csrspec import load_csr_input
from estkit.client.errors import NetworkError, TrustError
from estkit.errors import EstError, Pending, Unauthorized
from estkit.protocol import constants as c
from estkit.protocol.csrattrs import key_types_from
from estkit.protocol.keys import check_key_type_name
from estkit.protocol.pkcs7 import certs_only

__all__ = ["main", "estclient", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_AUTH", "EXIT_REFUSED",
           "EXIT_NETWORK", "EXIT_TRUST", "EXIT_PENDING", "exit_code_for"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_AUTH, EXIT_REFUSED, EXIT_NETWORK, EXIT_TRUST, EXIT_PENDING = range(8)
F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(exc: EstError) -> int:
    """The exit code of an estkit error."""
    if isinstance(exc, NetworkError):
        return EXIT_NETWORK
    if isinstance(exc, TrustError):
        return EXIT_TRUST
    if isinstance(exc, Pending):
        return EXIT_PENDING
    if isinstance(exc, Unauthorized):
        return EXIT_AUTH
    if exc.status >= 400:
        return EXIT_REFUSED
    return EXIT_FAILURE


class Failed(click.ClickException):
    """A failure with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]


def handle_errors(f: F) -> F:
    """Turn library errors into one line on stderr and the right exit code."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except EstError as exc:
            extra = f" (retry after {exc.retry_after} s)" if exc.retry_after else ""
            raise Failed(f"{exc.reason}{extra}", exit_code_for(exc)) from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        except OSError as exc:
            raise Failed(str(exc), EXIT_FAILURE) from None
    return wrapper  # type: ignore[return-value]


def server_options(f: F) -> F:
    """Options every subcommand shares."""
    opts = [
        click.option("--server", "server", envvar="ESTCLIENT_SERVER", required=True, metavar="URL",
                     help="EST server, https://host[:port][/path], or coaps://host[:port] for EST-coaps (RFC 9148) ($ESTCLIENT_SERVER)."),
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
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _show_pending(w: PendingWait) -> None:
    click.echo(f"{w.reason}; waiting {w.retry_after} s, until "
               f"{w.until.strftime('%Y-%m-%d %H:%M:%S UTC')} (attempt {w.attempt})", err=True)


def make_client(o: dict[str, Any], *, trust_override: bool = False) -> EstClient:
    """An EstClient from the shared options."""
    auth: PasswordAuth | None = None
    if o["user"]:
        if o["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
        elif os.environ.get(o["password_env"]) is not None:
            password = os.environ[o["password_env"]]
        else:
            raise click.UsageError(f"--user needs a password: --password-stdin or ${o['password_env']}")
        schemes = ("digest", "basic") if o["auth_scheme"] == "any" else (o["auth_scheme"],)
        auth = PasswordAuth(o["user"], password, schemes)
    if bool(o["cert"]) != bool(o["key"]):
        raise click.UsageError("--cert and --key go together")
    client_cert = ClientCertificate(Path(o["cert"]), Path(o["key"])) if o["cert"] else None
    return EstClient(o["server"], trust=None if trust_override else o["trust"], label=o["label"], auth=auth,
                     client_cert=client_cert, timeout=o["timeout"], pending_retries=o["retries"],
                     max_retry_after=o["max_wait"], on_pending=_show_pending)


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


def load_key(path: str) -> Any:
    """A private key from a PEM or DER file."""
    data = Path(path).read_bytes()
    try:
        return (serialization.load_pem_private_key(data, None) if b"-----BEGIN" in data
                else serialization.load_der_private_key(data, None))
    except (ValueError, TypeError) as exc:
        raise click.UsageError(f"{path}: not an unencrypted private key ({exc})") from None


def spec_options(f: F) -> F:
    """How to say what to ask for."""
    opts = [
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
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_spec(o: dict[str, Any], client: EstClient) -> tuple[CsrSpec | x509.CertificateSigningRequest, Any]:
    """The CSR to send and the key it is for (None for a finished CSR)."""
    if o["csr_file"]:
        if o["cn"] or o["dns"] or o["ip"] or o["csr_key"]:
            raise click.UsageError("--csr excludes --cn, --dns, --ip and --csr-key")
        return load_csr_input(Path(o["csr_file"]).read_bytes()), None
    if not (o["cn"] or o["dns"] or o["ip"]):
        raise click.UsageError("say what to ask for: --csr FILE, or --cn/--dns/--ip")
    if o["csr_key"]:
        key = load_key(o["csr_key"])
    else:
        key = client.new_key(check_key_type_name(o["key_type"]) if o["key_type"] else None)
    return CsrSpec(key, o["cn"], None, tuple(o["dns"]), tuple(o["ip"])), key


def save_pair(o: dict[str, Any], key: Any, cert: x509.Certificate, *, new_key: bool) -> None:
    """Write --key-out (when the key is new) and --cert-out (or stdout)."""
    if key is not None and new_key:
        if not o["key_out"]:
            raise click.UsageError("a new key was made: give --key-out FILE to keep it")
        write_out(o["key_out"], key_bytes(key, o["fmt"]), private=True)
    write_out(o["cert_out"], cert_bytes(cert, o["fmt"]))


@click.group()
@click.version_option(package_name="estkit")
def estclient() -> None:
    """estclient: get and keep certificates from an EST (RFC 7030) server."""


@estclient.command()
@server_options
@click.option("--out", default=None, metavar="FILE", help="Write the certificates here (default stdout).")
@click.option("--format", "fmt", type=click.Choice(["pem", "der"]), default="pem", show_default=True,
              help="pem: a PEM bundle; der: the PKCS#7 certs-only structure.")
@click.option("--fingerprint", "fingerprints", multiple=True, metavar="SHA256",
              help="Bootstrap (RFC 7030 §4.1.1): accept an unauthenticated server whose CA has this fingerprint.")
@click.option("--bootstrap", is_flag=True, help="Bootstrap interactively: show the fingerprint and ask.")
@handle_errors
def cacerts(out: str | None, fmt: str, fingerprints: tuple[str, ...], bootstrap: bool, **o: Any) -> None:
    """Fetch the CA certificates (RFC 7030 §4.1)."""
    confirm: Callable[[BootstrapOffer], bool] | None = None
    if fingerprints:
        confirm = confirm_fingerprint(fingerprints)
    elif bootstrap:
        def ask(offer: BootstrapOffer) -> bool:
            for cert, fp in zip(offer.anchors, offer.fingerprints):
                click.echo(f"CA: {cert.subject.rfc4514_string()}\nSHA-256 fingerprint: {fp}", err=True)
            return click.confirm("Is this the fingerprint you were given?", default=False, err=True)
        confirm = ask
    client = make_client(o, trust_override=confirm is not None)
    certs = client.cacerts(bootstrap=confirm)
    data = certs_only(certs) if fmt == "der" else b"".join(cert_bytes(ct, "pem") for ct in certs)
    write_out(out, data)


@estclient.command()
@server_options
@handle_errors
def csrattrs(**o: Any) -> None:
    """Show what the CA wants in a request (RFC 7030 §4.5)."""
    attrs = make_client(o).csrattrs()
    if not attrs.entries:
        click.echo("no CSR attributes")
    for kt in key_types_from(attrs):
        click.echo(f"key type: {kt}")
    if c.OID_CHALLENGE_PASSWORD.dotted_string in attrs.oids():
        click.echo("challengePassword: linking required (use --pop)")
    known = {c.OID_CHALLENGE_PASSWORD.dotted_string, c.OID_EC_PUBLIC_KEY.dotted_string,
             c.OID_RSA_ENCRYPTION.dotted_string, c.OID_ED25519.dotted_string}
    for e in attrs.entries:
        if e.oid not in known:
            click.echo(f"{'attribute' if e.is_attribute else 'oid'}: {e.oid}")


@estclient.command()
@server_options
@spec_options
@click.option("--dir", "cred_dir", default=None, metavar="DIR",
              help="Write key and certificate into a credential directory that `renew` keeps up to date.")
@handle_errors
def enroll(cred_dir: str | None, **o: Any) -> None:
    """Get a certificate (RFC 7030 §4.2.1 simpleenroll)."""
    from estkit.client import CredentialDir
    client = make_client(o)
    spec, key = build_spec(o, client)
    if cred_dir and key is None:
        raise click.UsageError("--dir needs the key: build the CSR with --cn/--dns/--ip")
    cert = client.simpleenroll(spec, link=o["pop"])
    if cred_dir:
        CredentialDir(cred_dir).write(key, cert)
        click.echo(f"{cred_dir}: {cert.subject.rfc4514_string()} serial {cert.serial_number:X} until "
                   f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC", err=True)
        return
    save_pair(o, key, cert, new_key=not o["csr_key"])


@estclient.command()
@server_options
@spec_options
@click.option("--same-key", is_flag=True, help="Renew with the --key of the TLS certificate instead of a new key.")
@handle_errors
def reenroll(same_key: bool, **o: Any) -> None:
    """Renew or rekey the --cert/--key certificate (RFC 7030 §4.2.2 simplereenroll).
    Subject and SANs are those of --cert unless --csr is given."""
    from estkit.client.csrspec import spec_from_certificate
    client = make_client(o)
    if client.client_cert is None:
        raise click.UsageError("reenroll authenticates with the certificate being renewed: give --cert and --key")
    if o["csr_file"]:
        spec, key = build_spec(o, client)
    else:
        if o["cn"] or o["dns"] or o["ip"]:
            raise click.UsageError("reenroll keeps the subject and SANs (RFC 7030 §4.2.2): no --cn/--dns/--ip")
        if same_key:
            key = client.client_cert.private_key()
        elif o["csr_key"]:
            key = load_key(o["csr_key"])
        else:
            from estkit.protocol.keys import key_type_of
            kt = o["key_type"] or key_type_of(client.client_cert.certificate().public_key())
            key = client.new_key(check_key_type_name(kt))
        spec = spec_from_certificate(client.client_cert.certificate(), key)
    cert = client.simplereenroll(spec, link=o["pop"])
    save_pair(o, key, cert, new_key=not (same_key or o["csr_key"] or o["csr_file"]))


@estclient.command()
@server_options
@spec_options
@click.option("--encrypt", is_flag=True, help="Have the key encrypted to the TLS client certificate (RFC 7030 §4.4.1.2).")
@click.option("--allow-plaintext-key", is_flag=True,
              help="With --encrypt: accept a key the server returned unencrypted (a downgrade; refused by default).")
@handle_errors
def serverkeygen(encrypt: bool, allow_plaintext_key: bool, **o: Any) -> None:
    """Have the server make the key and the certificate (RFC 7030 §4.4)."""
    client = make_client(o)
    if not o["key_out"]:
        raise click.UsageError("give --key-out FILE for the server-generated key")
    spec, _key = build_spec(o, client) if (o["csr_file"] or o["cn"] or o["dns"] or o["ip"]) else (None, None)
    key, cert = client.serverkeygen(spec, encrypt=encrypt, link=o["pop"], allow_plaintext_key=allow_plaintext_key)
    save_pair(o, key, cert, new_key=True)


def main() -> None:
    """Console entry point (``estclient``)."""
    from estkit.cli import client_renew  # noqa: F401  (registers renew and fullcmc)
    warnings.formatwarning = _warning_line
    estclient(prog_name="estclient")


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """Library warnings (an unreadable /csrattrs) as one line on stderr, without source lines."""
    return f"estclient: warning: {message}\n"
