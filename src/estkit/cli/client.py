"""``estclient``: the EST client on the command line (docs/client.md).

Exit codes: 0 success (``renew``: also nothing due), 1 other failure (a
malformed answer, a file), 2 usage, 3 authentication failed (401), 4 refused
by the server (other 4xx/5xx), 5 network failure, 6 server not trusted (or a
bootstrap fingerprint not confirmed), 7 still pending (202) after the retries.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from estkit.cli.client_options import (ConnectionOptions, SpecOptions, build_spec, cert_bytes, load_key,
                                       make_client, save_pair, server_options, spec_options, write_out)
from estkit.client import BootstrapOffer, confirm_fingerprint
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
def cacerts(out: str | None, fmt: str, fingerprints: tuple[str, ...], bootstrap: bool, *,
            conn: ConnectionOptions) -> None:
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
    client = make_client(conn, trust_override=confirm is not None)
    certs = client.cacerts(bootstrap=confirm)
    data = certs_only(certs) if fmt == "der" else b"".join(cert_bytes(ct, "pem") for ct in certs)
    write_out(out, data)


@estclient.command()
@server_options
@handle_errors
def csrattrs(*, conn: ConnectionOptions) -> None:
    """Show what the CA wants in a request (RFC 7030 §4.5)."""
    attrs = make_client(conn).csrattrs()
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
def enroll(cred_dir: str | None, *, conn: ConnectionOptions, spec: SpecOptions) -> None:
    """Get a certificate (RFC 7030 §4.2.1 simpleenroll)."""
    from estkit.client import CredentialDir
    client = make_client(conn)
    request, key = build_spec(spec, client)
    if cred_dir and key is None:
        raise click.UsageError("--dir needs the key: build the CSR with --cn/--dns/--ip")
    cert = client.simpleenroll(request, link=spec.pop)
    if cred_dir and key is not None:
        CredentialDir(cred_dir).write(key, cert)
        click.echo(f"{cred_dir}: {cert.subject.rfc4514_string()} serial {cert.serial_number:X} until "
                   f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC", err=True)
        return
    save_pair(spec, key, cert, new_key=not spec.csr_key)


@estclient.command()
@server_options
@spec_options
@click.option("--same-key", is_flag=True, help="Renew with the --key of the TLS certificate instead of a new key.")
@handle_errors
def reenroll(same_key: bool, *, conn: ConnectionOptions, spec: SpecOptions) -> None:
    """Renew or rekey the --cert/--key certificate (RFC 7030 §4.2.2 simplereenroll).
    Subject and SANs are those of --cert unless --csr is given."""
    from estkit.client.csrspec import spec_from_certificate
    client = make_client(conn)
    if client.client_cert is None:
        raise click.UsageError("reenroll authenticates with the certificate being renewed: give --cert and --key")
    if spec.csr_file:
        request, key = build_spec(spec, client)
    else:
        if spec.names_given:
            raise click.UsageError("reenroll keeps the subject and SANs (RFC 7030 §4.2.2): no --cn/--dns/--ip")
        if same_key:
            key = client.client_cert.private_key()
        elif spec.csr_key:
            key = load_key(spec.csr_key)
        else:
            from estkit.protocol.keys import key_type_of
            kt = spec.key_type or key_type_of(client.client_cert.certificate().public_key())
            key = client.new_key(check_key_type_name(kt))
        request = spec_from_certificate(client.client_cert.certificate(), key)
    cert = client.simplereenroll(request, link=spec.pop)
    save_pair(spec, key, cert, new_key=not (same_key or spec.csr_key or spec.csr_file))


@estclient.command()
@server_options
@spec_options
@click.option("--encrypt", is_flag=True, help="Have the key encrypted to the TLS client certificate (RFC 7030 §4.4.1.2).")
@click.option("--allow-plaintext-key", is_flag=True,
              help="With --encrypt: accept a key the server returned unencrypted (a downgrade; refused by default).")
@handle_errors
def serverkeygen(encrypt: bool, allow_plaintext_key: bool, *, conn: ConnectionOptions, spec: SpecOptions) -> None:
    """Have the server make the key and the certificate (RFC 7030 §4.4)."""
    client = make_client(conn)
    if not spec.key_out:
        raise click.UsageError("give --key-out FILE for the server-generated key")
    request = build_spec(spec, client)[0] if (spec.csr_file or spec.names_given) else None
    key, cert = client.serverkeygen(request, encrypt=encrypt, link=spec.pop, allow_plaintext_key=allow_plaintext_key)
    save_pair(spec, key, cert, new_key=True)


def main() -> None:
    """Console entry point (``estclient``)."""
    from estkit.cli import client_renew  # noqa: F401  (registers renew and fullcmc)
    warnings.formatwarning = _warning_line
    estclient(prog_name="estclient")


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """Library warnings (an unreadable /csrattrs) as one line on stderr, without source lines."""
    return f"estclient: warning: {message}\n"
