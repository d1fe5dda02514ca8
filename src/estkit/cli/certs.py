"""``estkit revoke``, ``estkit unrevoke``, ``estkit certs list|show``, ``estkit crl show|export|update``."""

from __future__ import annotations

import fnmatch
import json
import os
import re
from datetime import UTC, datetime

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from estkit.ca.ports import CertQuery, CertStatus, StoredCert, StoreError
from estkit.cli.common import DirOption, config_for
from estkit.errors import EstError

__all__ = ["register"]


_dir_option = DirOption


def _revocation(directory: str | None):  # type: ignore[no-untyped-def]
    from estkit.cli.wiring import build_authority, build_revocation
    try:
        return build_revocation(build_authority(config_for(directory)))
    except StoreError as exc:
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
        done = rev.revoke(_serial(serial), reason, identity="cli")
    except EstError as exc:
        raise click.ClickException(exc.reason) from None
    stored = done.cert
    if not done.changed:
        at = f"{stored.revoked_at:%Y-%m-%d %H:%M:%S}Z" if stored.revoked_at else "-"
        click.echo(f"{stored.serial:x} ({stored.subject}) is already revoked: reason {stored.revocation_reason} "
                   f"since {at}; nothing changed")
        return
    crl = rev.ca.store.get_crl(stored.ca)
    click.echo(f"revoked {stored.serial:x} ({stored.subject}) reason {stored.revocation_reason}"
               + (f"; CRL number {crl.number}" if crl else ""))


@click.command()
@click.argument("serial")
@_dir_option
def unrevoke(serial: str, directory: str | None) -> None:
    """Release the certificateHold of the certificate with hexadecimal SERIAL
    (RFC 5280 §5.3.1; no other revocation can be undone) and publish a new CRL."""
    rev = _revocation(directory)
    try:
        stored = rev.release_hold(_serial(serial), identity="cli")
    except EstError as exc:
        raise click.ClickException(exc.reason) from None
    crl = rev.ca.store.get_crl(stored.ca)
    click.echo(f"released the hold of {stored.serial:x} ({stored.subject}): valid again"
               + (f"; CRL number {crl.number}" if crl else ""))


@click.group()
def certs() -> None:
    """Issued certificates."""


def openssl_serial(serial: int) -> str:
    """A serial as ``openssl x509 -serial`` prints it: upper-case hex, whole bytes."""
    text = format(serial, "X")
    return "0" + text if len(text) % 2 else text


def _status(s: StoredCert, now: datetime) -> str:
    if s.revoked:
        return f"revoked:{s.revocation_reason}"
    return CertStatus.EXPIRED.value if s.not_after <= now else CertStatus.VALID.value


def _cn(subject: str) -> list[str]:
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError:
        return []
    return [str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _store(directory: str | None):  # type: ignore[no-untyped-def]
    from estkit.cli.wiring import build_store
    try:
        return build_store(config_for(directory))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@certs.command("list")
@_dir_option
@click.option("--cn", "cn", default=None, metavar="PATTERN", help="CN glob, e.g. 'gw-*'.")
@click.option("--san", default=None, metavar="PATTERN",
              help="subjectAltName value glob, e.g. '*.devices.example.com' (any SAN matching).")
@click.option("--label", default=None, help="Issued under this CA label.")
@click.option("--status", type=click.Choice([s.value for s in CertStatus]), default=None)
@click.option("--revoked", is_flag=True, help="Same as --status revoked.")
@click.option("--expiring-within", "expiring", default=None, metavar="AGE",
              help="Valid certificates whose notAfter is within 30d, 12h, 2w...")
@click.option("--requester", default=None, help="Requested by this identity, e.g. user:line-1.")
@click.option("--limit", default=100, show_default=True, help="At most this many (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def certs_list(directory: str | None, cn: str | None, san: str | None, label: str | None, status: str | None,
               revoked: bool, expiring: str | None, requester: str | None, limit: int, as_json: bool) -> None:
    """List issued certificates, newest first: serial (as openssl prints it),
    subject, SANs, notAfter, label, requester, status."""
    from estkit.cli.users import parse_when
    now = datetime.now(UTC)
    if expiring is not None and not re.fullmatch(r"\d+[smhdw]", expiring.strip()):
        raise click.BadParameter(f"{expiring!r}: expected an age such as 30d, 12h or 2w",
                                 param_hint="--expiring-within")
    query = CertQuery(label=label, requester=requester,
                      status=CertStatus.REVOKED if revoked else CertStatus(status) if status else None,
                      expiring_before=parse_when(expiring, now) if expiring else None)
    store = _store(directory)
    try:
        rows = store.list_certificates(limit=None, query=query)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if cn is not None:
        rows = [s for s in rows if any(fnmatch.fnmatchcase(v, cn) for v in _cn(s.subject))]
    if san is not None:
        rows = [s for s in rows if any(fnmatch.fnmatchcase(v.split(":", 1)[-1], san) for v in s.sans)]
    if limit > 0:
        rows = rows[:limit]
    if not as_json:
        click.echo("SERIAL\tSUBJECT\tSANS\tNOT_AFTER\tLABEL\tREQUESTER\tSTATUS")
    for s in rows:
        if as_json:
            click.echo(json.dumps({
                "serial": openssl_serial(s.serial), "subject": s.subject, "sans": list(s.sans),
                "not_before": s.not_before.isoformat(), "not_after": s.not_after.isoformat(), "label": s.label,
                "requester": s.requester, "enrollee": s.enrollee or None, "issued_at": s.issued_at.isoformat(),
                "status": _status(s, now).split(":")[0], "revocation_reason": s.revocation_reason,
                "revoked_at": s.revoked_at.isoformat() if s.revoked_at else None}))
        else:
            click.echo(f"{openssl_serial(s.serial)}\t{s.subject}\t{','.join(s.sans) or '-'}\t"
                       f"{s.not_after:%Y-%m-%d}\t{s.label}\t{s.requester}\t{_status(s, now)}")


@certs.command("show")
@click.argument("serial")
@_dir_option
@click.option("--pem", is_flag=True, help="Print the certificate as PEM instead.")
def certs_show(serial: str, directory: str | None, pem: bool) -> None:
    """One certificate: subject, SANs, validity, label, requester, enrollee, status, revocation."""
    store = _store(directory)
    try:
        s = store.get_certificate(_serial(serial))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if s is None:
        raise click.ClickException(f"no certificate with serial {serial}")
    if pem:
        click.echo(x509.load_der_x509_certificate(s.der).public_bytes(Encoding.PEM).decode(), nl=False)
        return
    revoked = (f"{s.revocation_reason} at {s.revoked_at:%Y-%m-%d %H:%M:%S}Z" if s.revoked_at else "-")
    click.echo(f"serial:     {openssl_serial(s.serial)}\nsubject:    {s.subject}\n"
               f"sans:       {', '.join(s.sans) or '-'}\n"
               f"not before: {s.not_before:%Y-%m-%d %H:%M:%S}Z\nnot after:  {s.not_after:%Y-%m-%d %H:%M:%S}Z\n"
               f"ca:         {s.ca}\nlabel:      {s.label}\nrequester:  {s.requester}\n"
               f"enrollee:   {s.enrollee or '- (unknown)'}\nissued at:  {s.issued_at:%Y-%m-%d %H:%M:%S}Z\n"
               f"status:     {_status(s, datetime.now(UTC)).replace(':', ' ')}\nrevoked:    {revoked}")


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
    cli.add_command(unrevoke)
    cli.add_command(certs)
    cli.add_command(crl)
