"""Operator commands: ``estkit requests list/show/approve/reject`` (RFC 7030 §4.2.3)."""

from __future__ import annotations

import getpass

import click

from estkit.ca.authority import CertificateAuthority
from estkit.ca.ports import PendingStatus
from estkit.cli.common import DirOption, config_for
from estkit.errors import EstError

__all__ = ["register"]



def _ca(directory: str | None) -> CertificateAuthority:
    from estkit.cli.wiring import build_authority
    return build_authority(config_for(directory))


_dir = DirOption


@click.group()
def requests() -> None:
    """Enrollment requests held for manual approval."""


@requests.command("list")
@_dir
@click.option("--status", default=PendingStatus.PENDING.value, show_default=True,
              type=click.Choice([*(s.value for s in PendingStatus), "all"]), help="Which requests to list.")
def list_requests(directory: str | None, status: str) -> None:
    """List requests (ID, status, label, identity, created, CSR fingerprint)."""
    store = _ca(directory).store
    for r in store.list_pending(None if status == "all" else PendingStatus(status)):
        click.echo(f"{r.id}\t{r.status}\t{r.label}\t{r.identity}\t{r.created_at:%Y-%m-%dT%H:%M:%SZ}\t"
                   f"{r.csr_fingerprint[:16]}")


@requests.command("show")
@click.argument("request_id", type=int)
@_dir
def show_request(request_id: int, directory: str | None) -> None:
    """Show one request and the CSR's subject, SANs and key."""
    from estkit.protocol.csr import general_names_text, load_csr
    store = _ca(directory).store
    r = store.get_pending(request_id)
    if r is None:
        raise click.ClickException(f"no request {request_id}")
    info = load_csr(r.csr_der)
    click.echo(f"id:          {r.id}\nstatus:      {r.status}\noperation:   {r.operation}\nlabel:       {r.label}\n"
               f"identity:    {r.identity}\ncreated:     {r.created_at.isoformat()}\n"
               f"decided:     {r.decided_at.isoformat() if r.decided_at else '-'}\nreason:      {r.reason or '-'}\n"
               f"subject:     {info.subject.rfc4514_string()}\nSANs:        {', '.join(general_names_text(info.san)) or '-'}\n"
               f"key:         {info.key_type}\nfingerprint: {r.csr_fingerprint}\n"
               f"serial:      {format(r.serial, 'x') if r.serial is not None else '-'}")


def _decide(request_id: int, directory: str | None, approve: bool, reason: str, operator: str | None) -> None:
    try:
        r = _ca(directory).decide_request(request_id, approve, operator=operator or getpass.getuser(), reason=reason)
    except EstError as exc:
        raise click.ClickException(exc.reason) from None
    click.echo(f"request {r.id} {r.status}")


@requests.command("approve")
@click.argument("request_id", type=int)
@_dir
@click.option("--operator", default=None, help="Who decides (default: the login name).")
def approve(request_id: int, directory: str | None, operator: str | None) -> None:
    """Approve a pending request: the client's next retry gets its certificate."""
    _decide(request_id, directory, True, "", operator)


@requests.command("reject")
@click.argument("request_id", type=int)
@_dir
@click.option("--reason", required=True, help="Told to the client with its 403.")
@click.option("--operator", default=None, help="Who decides (default: the login name).")
def reject(request_id: int, directory: str | None, reason: str, operator: str | None) -> None:
    """Reject a pending request: the client's next retry gets 403 with the reason."""
    _decide(request_id, directory, False, reason, operator)


def register(cli: click.Group) -> None:
    """Add the operator commands to ``estkit``."""
    cli.add_command(requests)
