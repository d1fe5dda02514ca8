"""``estkit user add/list/show/set/remove``: HTTP Basic (and Digest) users,
one-time enrollment codes, and each user's authorization policy (estkit.ca.authz)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from estkit.ca.authz import selects
from estkit.ca.identity import Identity, IdentityKind
from estkit.ca.passwords import digest_ha1, generate_password, hash_password
from estkit.ca.ports import Conflict, UserRecord
from estkit.ca.rules import POLICY_KEYS, Policy, PolicyError, policy_from_mapping
from estkit.cli.common import DirOption, config_for

__all__ = ["user", "parse_expiry", "parse_when"]

F = TypeVar("F", bound=Callable[..., Any])
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LISTS = ("labels", "cn", "subject", "dns", "ip", "email", "uri")


def parse_when(text: str, now: datetime, *, past: bool = False) -> datetime:
    """``30s``, ``30m``, ``12h``, ``7d``, ``2w`` from now (before now with ``past``),
    or an ISO date/time (UTC unless it says otherwise)."""
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if m:
        delta = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
        return now - delta if past else now + delta
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected 30m, 12h, 7d, 2w or an ISO date/time") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def parse_expiry(text: str, now: datetime) -> datetime | None:
    """An expiry as :func:`parse_when` reads it, or ``never`` (None)."""
    return None if text == "never" else parse_when(text, now)


def _policy_options(f: F) -> F:
    opts = [
        click.option("--label", "labels", multiple=True, help="Allowed CA label (repeatable; default: any)."),
        click.option("--cn", multiple=True, help="Allowed CN glob; {name} is the user name (repeatable)."),
        click.option("--subject", multiple=True, help="Allowed whole-subject glob, RFC 4514 (repeatable)."),
        click.option("--dns", multiple=True, help="Allowed DNS SAN glob, e.g. '*.devices.example.com'."),
        click.option("--ip", multiple=True, help="Allowed IP SAN network, e.g. 10.0.0.0/8."),
        click.option("--email", multiple=True, help="Allowed email SAN glob."),
        click.option("--uri", multiple=True, help="Allowed URI SAN glob."),
        click.option("--max-validity-days", type=int, default=None, help="Cap on certificate validity."),
        click.option("--rate", default=None, help="At most COUNT/PERIOD certificates, e.g. 10/hour."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _policy_from_options(base: dict[str, object] | None, opts: dict[str, Any]) -> dict[str, object] | None:
    """The stored policy after applying the options given (each replaces its rule)."""
    out = dict(base or {})
    changed = False
    for key in _LISTS:
        if opts.get(key):
            out[key] = list(opts[key])
            changed = True
    for key in ("max_validity_days", "rate"):
        if opts.get(key) is not None:
            out[key] = opts[key]
            changed = True
    if not changed:
        return base
    try:
        policy_from_mapping("cli", out)
    except PolicyError as exc:
        raise click.BadParameter(str(exc)) from None
    return out


def _password(password_stdin: bool, generate: bool) -> tuple[str, bool]:
    if password_stdin and generate:
        raise click.UsageError("give only one of --password-stdin or --generate")
    if generate:
        return generate_password(), True
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("empty password on standard input")
    return password, False


def _store_and_realm(directory: str | None, labels: tuple[str, ...] = ()) -> tuple[Any, str, tuple[Policy, ...]]:
    from estkit.cli.wiring import build_store
    cfg = config_for(directory)
    for label in labels:
        if label not in cfg.labels:
            raise click.BadParameter(f"unknown label {label!r} (configured: {', '.join(cfg.labels)})",
                                     param_hint="--label")
    return build_store(cfg), cfg.server.realm, cfg.policies


def _any_name(u: UserRecord, rules: tuple[Policy, ...]) -> bool:
    """True when nothing restricts the names the user may ask for: neither its
    own policy nor a [policies] table that selects it (docs/policy.md)."""
    try:
        own = policy_from_mapping(f"user:{u.name}", u.policy) if u.policy is not None else None
    except PolicyError:
        return False  # a damaged stored policy allows nothing
    p = own or next((r for r in rules if selects(r, Identity(IdentityKind.USER, u.name))), None)
    return p is None or not p.restricts_names


def _flags(u: UserRecord, now: datetime, rules: tuple[Policy, ...]) -> str:
    flags = [f for f, on in (("one-time", u.one_time), ("used", u.used_at is not None), ("disabled", u.disabled),
                             ("expired", u.expires_at is not None and u.expires_at <= now),
                             ("digest", bool(u.digest_ha1)), ("policy", u.policy is not None),
                             ("any-name", _any_name(u, rules))) if on]
    return ",".join(flags) or "-"


@click.group()
def user() -> None:
    """Manage HTTP Basic (and Digest) users: add, list, show, set, remove."""

@user.command("add")
@click.argument("name")
@DirOption
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--generate", is_flag=True, help="Generate a random password and print it.")
@click.option("--one-time", is_flag=True,
              help="A one-time enrollment code: one successful enrollment, then it stops working "
                   "(generated unless --password-stdin).")
@click.option("--expires", default=None, metavar="WHEN", help="7d, 12h, 30m, 2w or an ISO date.")
@click.option("--digest", is_flag=True, help="Also allow HTTP Digest (stores H(user:realm:password)).")
@_policy_options
def user_add(name: str, directory: str | None, password_stdin: bool, generate: bool, one_time: bool,
             expires: str | None, digest: bool, **policy: Any) -> None:
    """Add user NAME (password stored only as a salted scrypt hash).  Options
    like --label, --cn, --dns restrict what NAME may request (docs/policy.md)."""
    if not password_stdin and not generate and not one_time:
        raise click.UsageError("give one of --password-stdin, --generate or --one-time")
    password, generated = _password(password_stdin, generate or (one_time and not password_stdin))
    now = datetime.now(UTC)
    store, realm, rules = _store_and_realm(directory, policy["labels"])
    record = UserRecord(name=name, password_hash=hash_password(password), created_at=now, one_time=one_time,
                        expires_at=parse_expiry(expires, now) if expires else None,
                        policy=_policy_from_options(None, policy),
                        digest_ha1=digest_ha1(name, realm, password) if digest else None)
    try:
        store.add_user(record)
    except Conflict:
        raise click.ClickException(f"user {name!r} already exists") from None
    if generated:
        click.echo(password)
    else:
        click.echo(f"added user {name}", err=True)
    if _any_name(record, rules):
        click.echo(f"warning: no policy restricts user {name}: it may request any name (add rules such as "
                   "--cn, --dns, --label, or a [policies] table; docs/policy.md)", err=True)

@user.command("list")
@DirOption
def user_list(directory: str | None) -> None:
    """List users: name, created, flags (one-time, used, disabled, expired, digest, policy,
    any-name: nothing restricts the names it may request)."""
    store, _, rules = _store_and_realm(directory)
    now = datetime.now(UTC)
    for u in store.list_users():
        click.echo(f"{u.name}\t{u.created_at:%Y-%m-%d}\t{_flags(u, now, rules)}")

@user.command("show")
@click.argument("name")
@DirOption
def user_show(name: str, directory: str | None) -> None:
    """Show one user and its policy (never the password or its hashes)."""
    store, _, _ = _store_and_realm(directory)
    u = store.get_user(name)
    if u is None:
        raise click.ClickException(f"no user {name!r}")
    def iso(d: datetime | None) -> str:
        return d.isoformat() if d else "-"
    click.echo(f"name:      {u.name}\ncreated:   {u.created_at.isoformat()}\none-time:  {'yes' if u.one_time else 'no'}\n"
               f"used:      {iso(u.used_at)}\nexpires:   {iso(u.expires_at)}\n"
               f"disabled:  {'yes' if u.disabled else 'no'}\n"
               f"digest:    {', '.join(sorted(u.digest_ha1)) if u.digest_ha1 else 'no'}\n"
               f"policy:    {json.dumps(u.policy, sort_keys=True) if u.policy is not None else '- (unrestricted)'}")

@user.command("set")
@click.argument("name")
@DirOption
@click.option("--password-stdin", is_flag=True, help="New password from standard input.")
@click.option("--generate", is_flag=True, help="New generated password, printed.")
@click.option("--digest/--no-digest", default=None, help="Allow HTTP Digest (needs a new password) or not.")
@click.option("--enable/--disable", default=None, help="Enable or disable the user.")
@click.option("--expires", default=None, metavar="WHEN", help="7d, 12h, an ISO date, or never.")
@click.option("--reset-used", is_flag=True, help="Let a used one-time code enroll once more.")
@click.option("--clear-policy", is_flag=True, help="Remove every restriction first.")
@click.option("--unset", "unset", multiple=True, type=click.Choice(POLICY_KEYS),
              help="Remove one rule (repeatable).")
@_policy_options
def user_set(name: str, directory: str | None, password_stdin: bool, generate: bool, digest: bool | None,
             enable: bool | None, expires: str | None, reset_used: bool, clear_policy: bool,
             unset: tuple[str, ...], **policy: Any) -> None:
    """Change user NAME: password, Digest, enabled, expiry, policy rules (each
    option given replaces that rule)."""
    store, realm, _ = _store_and_realm(directory, policy["labels"])
    u = store.get_user(name)
    if u is None:
        raise click.ClickException(f"no user {name!r}")
    base = None if clear_policy else (dict(u.policy) if u.policy is not None else None)
    for key in unset:
        if base is not None:
            base.pop(key, None)
    pol = _policy_from_options(base, policy)
    new = replace(u, policy=pol or None)  # no rule left: unrestricted (or a config policy)
    generated = None
    if password_stdin or generate:
        password, was_generated = _password(password_stdin, generate)
        generated = password if was_generated else None
        want_digest = digest if digest is not None else bool(u.digest_ha1)
        new = replace(new, password_hash=hash_password(password),
                      digest_ha1=digest_ha1(name, realm, password) if want_digest else None)
    elif digest:
        raise click.UsageError("--digest needs the password: add --password-stdin or --generate")
    elif digest is False:
        new = replace(new, digest_ha1=None)
    if enable is not None:
        new = replace(new, disabled=not enable)
        if not enable:
            click.echo(f"user {name} disabled: its certificates can no longer enroll or re-enroll, but stay "
                       "valid for TLS until they expire or are revoked (estkit certs list, estkit revoke)", err=True)
    if expires is not None:
        new = replace(new, expires_at=parse_expiry(expires, datetime.now(UTC)))
    if reset_used:
        new = replace(new, used_at=None)
    store.update_user(new)
    if generated:
        click.echo(generated)
    click.echo(f"updated user {name}", err=True)

@user.command("remove")
@click.argument("name")
@DirOption
def user_remove(name: str, directory: str | None) -> None:
    """Remove user NAME."""
    store, _, _ = _store_and_realm(directory)
    if not store.remove_user(name):
        raise click.ClickException(f"no user {name!r}")
    click.echo(f"removed user {name}", err=True)
    click.echo(f"the certificates user {name} obtained can no longer enroll or re-enroll, but stay valid for "
               "TLS until they expire or are revoked (estkit certs list, estkit revoke)", err=True)
