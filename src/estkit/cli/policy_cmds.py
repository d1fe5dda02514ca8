"""Authorization commands: ``estkit audit`` and ``estkit bootstrap list/allow``
(once-only enrollments); ``estkit user ...`` is estkit.cli.users."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from estkit.ca.ports import AuditEventType
from estkit.cli.common import DirOption, config_for
from estkit.cli.users import parse_when

__all__ = ["register"]



_dir = DirOption


def _store(directory: str | None) -> Any:
    from estkit.cli.wiring import build_store
    return build_store(config_for(directory))


def _since(text: str | None) -> datetime | None:
    return parse_when(text, datetime.now(UTC), past=True) if text else None


@click.command("audit")
@_dir
@click.option("--event", default=None, type=click.Choice([e.value for e in AuditEventType]),
              help="Only this kind of event (auth-failed: failed logins and refused certificates, per minute).")
@click.option("--identity", default=None, help="e.g. user:alice or cert:CN=gw1 (exact).")
@click.option("--label", default=None, help="CA label (exact).")
@click.option("--serial", default=None, help="Certificate serial in hex.")
@click.option("--since", default=None, help="30m, 12h, 7d or an ISO date/time.")
@click.option("--limit", default=100, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(directory: str | None, event: str | None, identity: str | None, label: str | None, serial: str | None,
          since: str | None, limit: int, as_json: bool) -> None:
    """The decision record, newest first: time, event, identity, peer, label,
    request fingerprint, serial, detail (the rule, for refusals)."""
    try:
        serial_int = int(serial, 16) if serial else None
    except ValueError:
        raise click.BadParameter(f"{serial!r} is not a hex serial") from None
    rows = _store(directory).list_audit(limit=limit, event=event, identity=identity, label=label,
                                        since=_since(since), serial=serial_int)
    for e in rows:
        ser = format(e.serial, "x") if e.serial is not None else None
        if as_json:
            click.echo(json.dumps({"id": e.id, "at": e.at.isoformat() if e.at else None, "event": e.event,
                                   "identity": e.identity, "peer": e.peer, "label": e.label,
                                   "csr_fingerprint": e.csr_fingerprint, "serial": ser, "detail": e.detail}))
        else:
            click.echo(f"{e.at:%Y-%m-%dT%H:%M:%SZ}\t{e.event}\t{e.identity}\t{e.peer}\t{e.label or '-'}\t"
                       f"{(e.csr_fingerprint or '-')[:16]}\t{ser or '-'}\t{e.detail}")


@click.group("bootstrap")
def bootstrap() -> None:
    """Once-only enrollments (policies with once = true, e.g. bootstrap IDevIDs)."""


@bootstrap.command("list")
@_dir
def bootstrap_list(directory: str | None) -> None:
    """Used once-only enrollments: key, identity, time, serial issued."""
    for c in _store(directory).list_claims():
        click.echo(f"{c.key}\t{c.identity}\t{c.at:%Y-%m-%dT%H:%M:%SZ}\t"
                   f"{format(c.serial, 'x') if c.serial is not None else '-'}")


@bootstrap.command("allow")
@click.argument("key")
@_dir
def bootstrap_allow(key: str, directory: str | None) -> None:
    """Allow the identity of KEY (from `bootstrap list`) to enroll once more."""
    if not _store(directory).remove_claim(key):
        raise click.ClickException(f"no used once-only enrollment {key!r}")
    click.echo(f"{key} may enroll once more", err=True)


def register(cli: click.Group) -> None:
    """Add the authorization commands to ``estkit``."""
    cli.add_command(audit)
    cli.add_command(bootstrap)
