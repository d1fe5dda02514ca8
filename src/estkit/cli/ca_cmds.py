"""``estkit ca rollover``: a new root key with the RFC 4210 §4.4 link certificates.

After a rollover /cacerts serves NewWithNew, OldWithOld, OldWithNew and
NewWithOld (RFC 7030 §4.1.3), new certificates are issued under the new root,
the old root stays trusted for client certificates it issued, and the TLS
server certificate is re-issued under the new root with NewWithOld in its
chain, so clients that trust only the old root still authenticate the server.
"""

from __future__ import annotations

import os
import re

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from estkit.ca.create import make_ca_certificate, make_tls_certificate
from estkit.ca.server_cert import record_own_certificate
from estkit.ca.ports import AuditEventType
from estkit.cli.common import config_for
from estkit.ca.pkcs11_uri import Pkcs11Uri, is_pkcs11_uri
from estkit.ca.signer import KeySigner, write_private_key
from estkit.config import ConfigError
from estkit.protocol.csr import general_names_text
from estkit.protocol.keys import generate_key, key_type_of

__all__ = ["register", "set_toml_key"]


def set_toml_key(text: str, table: str, key: str, literal: str) -> str:
    """Set ``key = literal`` inside ``[table]`` of a TOML text, keeping comments."""
    header = re.compile(rf"^\[{re.escape(table)}\]\s*(#.*)?$", re.M)
    m = header.search(text)
    if m is None:
        raise ConfigError(f"table [{table}] not found in the config")
    end = re.compile(r"^\[", re.M).search(text, m.end())
    stop = end.start() if end else len(text)
    body = text[m.end():stop]
    line = re.compile(rf"^{re.escape(key)}\s*=.*?(\s+#.*)?$", re.M)
    if line.search(body):
        body = line.sub(lambda mm: f"{key} = {literal}" + (mm.group(1) or ""), body, count=1)
    else:
        body = f"\n{key} = {literal}" + body
    return text[:m.end()] + body + text[stop:]


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _quote(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@click.group("ca")
def ca_group() -> None:
    """CA key management."""


@ca_group.command("rollover")
@click.option("--dir", "directory", default=None, metavar="DIR", help="Data directory.")
@click.option("--ca", "ca_name", default="default", show_default=True, help="Which [cas.NAME] to roll over.")
def rollover(directory: str | None, ca_name: str) -> None:
    """Replace a root CA's key: new root, link certificates, new TLS certificate."""
    from estkit.cli.wiring import build_store, ca_signer, load_pem_certs, passphrase_for
    cfg = config_for(directory)
    cc = cfg.cas.get(ca_name)
    if cc is None:
        raise click.ClickException(f"no CA {ca_name!r} in the config")
    old = load_pem_certs(cfg.path(cc.cert))[0]
    if cc.chain or old.issuer != old.subject:
        raise click.ClickException("rollover replaces a root that issues directly; with an intermediate, "
                                   "issue a new intermediate instead")
    try:
        old_signer = ca_signer(cfg, cc, old)  # the key file, or the token (logged in and probed)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    gen = 2
    while (cfg.dir / f"ca/root-{gen}.pem").exists():
        gen += 1
    new_key_value = f'"ca/root-{gen}.key"'
    if is_pkcs11_uri(cc.key):
        # A CA whose key is in a token gets its new root key there too (never in a file).
        from estkit.cli.tokeninit import TokenKeys
        try:
            new_signer, uri = TokenKeys(cfg.pkcs11, str(Pkcs11Uri.parse(cc.key).token)).key(
                f"root-g{gen}", key_type_of(old.public_key()))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        new_key_value = f'"{uri}"'
    else:
        passphrase = passphrase_for(cc)
        new_key = generate_key(key_type_of(old.public_key()))
        new_signer = KeySigner(new_key)
        write_private_key(cfg.dir / f"ca/root-{gen}.key", new_key, passphrase)
    cn = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = re.sub(r" G\d+$", "", str(cn[0].value) if cn else "estkit Root CA")
    new_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{base} G{gen}")])
    new_root = make_ca_certificate(new_name, new_signer.public_key(), new_signer, path_length=1)
    old_with_new = make_ca_certificate(old.subject, old_signer.public_key(), new_signer, issuer=new_root, path_length=0)
    new_with_old = make_ca_certificate(new_name, new_signer.public_key(), old_signer, issuer=old, path_length=0)

    (cfg.dir / f"ca/root-{gen}.pem").write_bytes(_pem(new_root))
    (cfg.dir / f"ca/rollover-{gen}.pem").write_bytes(_pem(old, old_with_new, new_with_old))

    old_tls = load_pem_certs(cfg.path(cfg.server.tls_cert))[0]
    names = [n.split(":", 1)[1] for n in general_names_text(
        old_tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)]
    tls_key = generate_key("ec:P-256")
    tls_cert = make_tls_certificate(tls_key, new_root, new_signer, names)
    write_private_key(cfg.dir / f"tls/server-{gen}.key", tls_key)
    (cfg.dir / f"tls/server-{gen}.pem").write_bytes(_pem(tls_cert, new_with_old))

    # Clients keep trusting the old root and learn the new one.
    trust = cfg.dir / "ca.pem"
    trust.write_bytes(_pem(new_root) + (trust.read_bytes() if trust.exists() else b""))

    text = (cfg.dir / "config.toml").read_text()
    extra = list(cc.extra_certs) + [f"ca/rollover-{gen}.pem"]
    text = set_toml_key(text, f"cas.{ca_name}", "cert", f'"ca/root-{gen}.pem"')
    text = set_toml_key(text, f"cas.{ca_name}", "key", new_key_value)
    text = set_toml_key(text, f"cas.{ca_name}", "extra_certs", _quote(extra))
    text = set_toml_key(text, "server", "tls_cert", f'"tls/server-{gen}.pem"')
    text = set_toml_key(text, "server", "tls_key", f'"tls/server-{gen}.key"')
    tmp = cfg.dir / "config.toml.tmp"
    tmp.write_text(text)
    os.replace(tmp, cfg.dir / "config.toml")

    record_own_certificate(build_store(cfg), tls_cert, ca=ca_name, requester="estkit ca rollover",
                           event=AuditEventType.ROLLOVER, detail=f"CA {ca_name}: new root {new_name.rfc4514_string()}")
    click.echo(f"rolled over CA {ca_name}: new root {new_name.rfc4514_string()} in ca/root-{gen}.pem; "
               f"restart the server. {trust} now holds the new and the old root.")


@ca_group.command("import-key")
@click.option("--dir", "directory", default=None, metavar="DIR", help="Data directory.")
@click.option("--ca", "ca_name", default="default", show_default=True, help="Which [cas.NAME] to move.")
@click.option("--pkcs11-module", default="", metavar="PATH",
              help="The token's PKCS#11 module (default: [pkcs11] module of the config).")
@click.option("--pkcs11-token", required=True, metavar="LABEL", help="The token's label.")
@click.option("--label", "key_label", default="", metavar="LABEL",
              help="The key object's label in the token (default: estkit-NAME-ca).")
@click.option("--pkcs11-pin-env", default=None, metavar="VAR",
              help="Environment variable holding the token's user PIN (default: pkcs11.pin_env of the config).")
@click.option("--keep-file", is_flag=True, help="Leave the key file in place (default: delete it once imported).")
def import_key(directory: str | None, ca_name: str, pkcs11_module: str, pkcs11_token: str, key_label: str,
               pkcs11_pin_env: str | None, keep_file: bool) -> None:
    """Move a CA's key file into a PKCS#11 token and point the config at it."""
    from estkit.ca.pkcs11 import Pkcs11Signer, TokenError
    from estkit.ca.pkcs11_keys import import_into_token
    from estkit.ca.pkcs11_uri import TokenSettings
    from estkit.ca.signer import load_signer
    from estkit.cli.wiring import load_pem_certs, passphrase_for
    cfg = config_for(directory)
    cc = cfg.cas.get(ca_name)
    if cc is None:
        raise click.ClickException(f"no CA {ca_name!r} in the config")
    if is_pkcs11_uri(cc.key):
        raise click.ClickException(f"CA {ca_name}'s key is already in a token ({cc.key})")
    settings = TokenSettings(module=pkcs11_module or cfg.pkcs11.module, pin_env=pkcs11_pin_env or cfg.pkcs11.pin_env)
    if not settings.module:
        raise click.ClickException("name the token's module with --pkcs11-module (or [pkcs11] module)")
    cert = load_pem_certs(cfg.path(cc.cert))[0]
    key_file = cfg.path(cc.key)
    uri = Pkcs11Uri(token=pkcs11_token, object=key_label or f"estkit-{ca_name}-ca", type="private")
    try:
        file_signer = load_signer(key_file, passphrase_for(cc))
        if file_signer.public_key() != cert.public_key():
            raise click.ClickException(f"{key_file} is not the key of {cc.cert}")
        import_into_token(file_signer._key, uri, settings)  # the one moment the key is read: to move it
        Pkcs11Signer(uri, settings, cert.public_key(), pss=cc.rsa_pss).probe()  # type: ignore[arg-type]
    except (TokenError, ValueError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    text = (cfg.dir / "config.toml").read_text()
    text = set_toml_key(text, f"cas.{ca_name}", "key", f'"{uri}"')
    text = set_toml_key(text, f"cas.{ca_name}", "key_passphrase_env", '""')
    if re.search(r"^\[pkcs11\]", text, re.M) is None:
        text = text.rstrip("\n") + "\n\n[pkcs11]\n"
    text = set_toml_key(text, "pkcs11", "module", f'"{settings.module}"')
    text = set_toml_key(text, "pkcs11", "pin_env", f'"{settings.pin_env}"')
    tmp = cfg.dir / "config.toml.tmp"
    tmp.write_text(text)
    os.replace(tmp, cfg.dir / "config.toml")
    if not keep_file:
        key_file.unlink()
    click.echo(f"imported the key of CA {ca_name} into {uri} (sensitive, not extractable); config.toml now "
               f"names it{'' if keep_file else f' and {key_file} is deleted'}. Restart the server.")


def register(cli: click.Group) -> None:
    """Add ``estkit ca``."""
    cli.add_command(ca_group)


