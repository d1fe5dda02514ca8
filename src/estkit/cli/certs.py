"""``estkit revoke``, ``estkit certs list``, ``estkit crl show|export|update``."""

from __future__ import annotations

import os

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from estkit.ca.ports import StoreError
from estkit.config import ConfigError, load_config, resolve_dir
from estkit.errors import EstError

__all__ = ["register"]


def _dir_option(f):  # type: ignore[no-untyped-def]
    return click.option("--dir", "directory", default=None, metavar="DIR",
                        help="Data directory (default: $ESTKIT_DIR, then ./estkit-data).")(f)


def _revocation(directory: str | None):  # type: ignore[no-untyped-def]
    from estkit.cli.wiring import build_authority, build_revocation
    try:
        return build_revocation(build_authority(load_config(resolve_dir(directory))))
    except (ConfigError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None


def _serial(text: str) -> int:
    """A serial as openssl prints it: hex, optionally with colons or 0x."""
    t = text.strip().lower().replace(":", "")
    t = t[2:] if t.startswith("0x") else t
    try:
        return int(t, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hexadecimal serial number") from None


@click.command()
@click.argument("serial")
@_dir_option
@click.option("--reason", default="unspecified", show_default=True,
              help="RFC 5280 CRLReason: keyCompromise, cACompromise, affiliationChanged, superseded, "
                   "cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise, unspecified.")
def revoke(serial: str, directory: str | None, reason: str) -> None:
    """Revoke the certificate with hexadecimal SERIAL and publish a new CRL."""
    rev = _revocation(directory)
    try:
        stored = rev.revoke(_serial(serial), reason, identity="cli")
    except EstError as exc:
        raise click.ClickException(exc.reason) from None
    crl = rev.ca.store.get_crl(stored.ca)
    click.echo(f"revoked {stored.serial:x} ({stored.subject}) reason {stored.revocation_reason}"
               + (f"; CRL number {crl.number}" if crl else ""))


@click.group()
def certs() -> None:
    """Issued certificates."""


@certs.command("list")
@_dir_option
@click.option("--revoked", is_flag=True, help="Only revoked certificates.")
@click.option("--limit", default=100, show_default=True)
def certs_list(directory: str | None, revoked: bool, limit: int) -> None:
    """List issued certificates, newest first: serial, subject, not-after, state."""
    from estkit.cli.wiring import build_store
    try:
        store = build_store(load_config(resolve_dir(directory)))
        rows = store.list_certificates(limit=limit)
    except (ConfigError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    for s in rows:
        if revoked and not s.revoked:
            continue
        state = f"revoked:{s.revocation_reason}" if s.revoked else "valid"
        click.echo(f"{s.serial:x}\t{s.subject}\t{s.not_after:%Y-%m-%d}\t{s.label}\t{state}")


@click.group()
def crl() -> None:
    """Certificate revocation lists."""


@crl.command("update")
@_dir_option
@click.option("--ca", "ca_name", default=None, help="CA name (default: every CA).")
def crl_update(directory: str | None, ca_name: str | None) -> None:
    """Sign and publish a new CRL now."""
    rev = _revocation(directory)
    for name in [ca_name] if ca_name else list(rev.ca.cas):
        try:
            rec = rev.regenerate(name)
        except KeyError:
            raise click.ClickException(f"no CA named {name!r}") from None
        click.echo(f"{name}: CRL number {rec.number}, next update {rec.next_update:%Y-%m-%d %H:%M:%S}Z")


@crl.command("show")
@_dir_option
@click.option("--ca", "ca_name", default="default", show_default=True)
def crl_show(directory: str | None, ca_name: str) -> None:
    """Print the current CRL: number, dates, revoked serials."""
    rev = _revocation(directory)
    try:
        rec = rev.current(ca_name)
    except EstError as exc:
        raise click.ClickException(exc.reason) from None
    parsed = x509.load_der_x509_crl(rec.der)
    click.echo(f"CA {ca_name}: CRL number {rec.number}, this update {rec.this_update:%Y-%m-%d %H:%M:%S}Z, "
               f"next update {rec.next_update:%Y-%m-%d %H:%M:%S}Z, {len(parsed)} revoked")
    for entry in parsed:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        except x509.ExtensionNotFound:
            reason = "unspecified"
        click.echo(f"{entry.serial_number:x}\t{entry.revocation_date_utc:%Y-%m-%d %H:%M:%S}Z\t{reason}")


@crl.command("export")
@_dir_option
@click.option("--ca", "ca_name", default="default", show_default=True)
@click.option("--pem", is_flag=True, help="PEM instead of DER.")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
def crl_export(directory: str | None, ca_name: str, pem: bool, out: str) -> None:
    """Write the current CRL to a file."""
    rev = _revocation(directory)
    try:
        rec = rev.current(ca_name)
    except EstError as exc:
        raise click.ClickException(exc.reason) from None
    data = x509.load_der_x509_crl(rec.der).public_bytes(Encoding.PEM) if pem else rec.der
    with open(out, "wb") as f:
        f.write(data)
    os.chmod(out, 0o644)  # a CRL is public (RFC 5280 §5), whatever estkit's private umask
    click.echo(f"wrote CRL number {rec.number} to {out}", err=True)


def register(cli: click.Group) -> None:
    """Add these commands to the ``estkit`` group."""
    cli.add_command(revoke)
    cli.add_command(certs)
    cli.add_command(crl)
