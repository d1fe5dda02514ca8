"""``estclient renew`` (for cron or a systemd timer) and ``estclient fullcmc``."""

from __future__ import annotations

import os

import click

from estkit.cli.client import estclient, handle_errors
from estkit.cli.client_options import (ConnectionOptions, SpecOptions, load_key, make_client, save_pair,
                                       server_options, spec_options)
from estkit.client import REVOCATION_REASONS, CredentialDir, remaining_fraction
from estkit.client.csrspec import spec_from_certificate
from estkit.protocol.keys import check_key_type_name, key_type_of

__all__ = ["renew", "fullcmc"]


@estclient.command()
@server_options
@click.option("--dir", "cred_dir", required=True, metavar="DIR",
              help="The credential directory written by `estclient enroll --dir`.")
@click.option("--threshold", default=1 / 3, show_default="1/3", type=click.FloatRange(0, 1),
              help="Renew once less than this fraction of the lifetime remains.")
@click.option("--force", is_flag=True, help="Renew even if not due.")
@click.option("--same-key", is_flag=True, help="Keep the key (renew) instead of making a new one (rekey).")
@click.option("--key-type", default=None, help="Type of the new key (default: that of the current one).")
@click.option("--pop/--no-pop", "pop", default=None, help="Link the CSR to the TLS session (RFC 7030 §3.5).")
@handle_errors
def renew(cred_dir: str, threshold: float, force: bool, same_key: bool, key_type: str | None, pop: bool | None,
          *, conn: ConnectionOptions) -> None:
    """Re-enroll DIR's certificate when due, replacing key and certificate atomically.
    Exit 0 when renewed and when nothing was due."""
    store = CredentialDir(cred_dir)
    if not store.exists():
        raise click.UsageError(f"{cred_dir} holds no credentials: run `estclient enroll --dir {cred_dir}` first")
    old_key, old = store.load()
    left = remaining_fraction(old)
    if left >= threshold and not force:
        click.echo(f"not due: {left:.0%} of the lifetime left, renewing below {threshold:.0%} "
                   f"(until {old.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
        return
    if conn.cert or conn.key:
        raise click.UsageError("renew authenticates with DIR's own certificate: no --cert/--key")
    gen = store.path / os.readlink(store.path / "current")
    client = make_client(conn.with_certificate(gen / "cert.pem", gen / "key.pem"))
    key = old_key if same_key else client.new_key(check_key_type_name(key_type or key_type_of(old.public_key())))
    cert = client.simplereenroll(spec_from_certificate(old, key), link=pop)
    store.write(key, cert)
    click.echo(f"renewed: serial {cert.serial_number:X} until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


@estclient.group()
def fullcmc() -> None:
    """Full CMC (RFC 7030 §4.3): enroll, renew, revoke."""


def _secret(secret_env: str | None) -> bytes | None:
    if not secret_env:
        return None
    value = os.environ.get(secret_env)
    if value is None:
        raise click.UsageError(f"${secret_env} is not set")
    return value.encode()


@fullcmc.command("enroll")
@server_options
@spec_options
@click.option("--secret-env", default=None, metavar="VAR",
              help="identityProofV2 (RFC 5272 §6.2.3) with the shared secret in $VAR.")
@click.option("--identification", default=None, help="identification control sent with the secret.")
@click.option("--crmf", is_flag=True, help="Send a CRMF request instead of PKCS#10.")
@handle_errors
def cmc_enroll_cmd(crmf: bool, identification: str | None, secret_env: str | None, *, conn: ConnectionOptions,
                   spec: SpecOptions) -> None:
    """Enroll through /fullcmc."""
    client = make_client(conn)
    if spec.csr_file:
        raise click.UsageError("fullcmc builds its own request: use --cn/--dns/--ip")
    key = load_key(spec.csr_key) if spec.csr_key else None
    key, cert = client.fullcmc_enroll(cn=spec.cn, dns=spec.dns, ips=spec.ip, key=key, crmf=crmf,
                                      shared_secret=_secret(secret_env), identification=identification)
    save_pair(spec, key, cert, new_key=not spec.csr_key)


@fullcmc.command("renew")
@server_options
@spec_options
@click.option("--same-key", is_flag=True, help="Keep the --key instead of making a new one.")
@click.option("--crmf", is_flag=True, help="Send a CRMF request instead of PKCS#10.")
@handle_errors
def cmc_renew_cmd(same_key: bool, crmf: bool, *, conn: ConnectionOptions, spec: SpecOptions) -> None:
    """Renew --cert/--key through /fullcmc (the request is signed by --cert's key)."""
    client = make_client(conn)
    if client.client_cert is None:
        raise click.UsageError("fullcmc renew needs --cert and --key")
    key = client.client_cert.private_key() if same_key else None
    if key is None and spec.key_type:
        key = client.new_key(check_key_type_name(spec.key_type))
    key, cert = client.fullcmc_renew(key=key, crmf=crmf)
    save_pair(spec, key, cert, new_key=not same_key)


@fullcmc.command("revoke")
@server_options
@click.option("--serial", default=None, metavar="HEX", help="Serial to revoke (default: that of --cert).")
@click.option("--reason", type=click.Choice(list(REVOCATION_REASONS)), default="unspecified", show_default=True)
@handle_errors
def cmc_revoke_cmd(serial: str | None, reason: str, *, conn: ConnectionOptions) -> None:
    """Revoke a certificate through /fullcmc, signed by --cert/--key."""
    client = make_client(conn)
    if client.client_cert is None:
        raise click.UsageError("fullcmc revoke is signed by a certificate: give --cert and --key")
    number = int(serial.replace(":", ""), 16) if serial else None
    client.fullcmc_revoke(serial=number, reason=REVOCATION_REASONS[reason])
    click.echo(f"revoked {number if number is not None else client.client_cert.certificate().serial_number:X}")


