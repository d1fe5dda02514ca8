"""``estkit``: initialise a CA, manage users, serve EST."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from datetime import UTC, datetime

import click

from estkit.ca.pkcs11_uri import DEFAULT_PIN_ENV, TokenSettings
from estkit.ca.passwords import generate_password, hash_password
from estkit.ca.ports import StoreError, UserRecord
from estkit.cli.common import DirOption, config_for
from estkit.config import ConfigError, resolve_dir, split_listen
from estkit.protocol.keys import check_key_type_name

__all__ = ["main", "cli"]






def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


@click.group()
@click.version_option(package_name="estkit")
def cli() -> None:
    """estkit: an EST (RFC 7030) server and certificate authority."""


@cli.command()
@DirOption
@click.option("--key-type", default="ec:P-256", show_default=True,
              help="CA key: ec:P-256, ec:P-384, rsa:2048, rsa:3072, rsa:4096 or ed25519.")
@click.option("--intermediate", is_flag=True, help="Issue from an intermediate CA under the root.")
@click.option("--hostname", "hostnames", multiple=True, help="Extra TLS server name (DNS or IP); repeatable.")
@click.option("--ca-name", default="estkit Root CA", show_default=True, help="Root CA common name.")
@click.option("--passphrase-env", default="", metavar="VAR",
              help="Encrypt the CA key with the passphrase in environment variable VAR.")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="Default listen address.")
@click.option("--crl-listen", default="", metavar="HOST:PORT",
              help="Serve CRLs over plain HTTP here; issued certificates then point to it (CRL Distribution Points).")
@click.option("--public-url", default="", metavar="URL",
              help="http://HOST[:PORT] where relying parties reach this server: turns on the CRL listener and the "
                   "OCSP responder there and puts their URLs into issued certificates.")
@click.option("--metrics-listen", default="", metavar="HOST:PORT",
              help="Serve Prometheus metrics over plain HTTP here (GET /metrics); off by default.")
@click.option("--pkcs11-module", default="", metavar="PATH",
              help="Keep the CA keys in a PKCS#11 token of this module (e.g. /usr/lib/softhsm/libsofthsm2.so).")
@click.option("--pkcs11-token", default="", metavar="LABEL", help="The token's label (with --pkcs11-module).")
@click.option("--pkcs11-key-label", default="", metavar="LABEL",
              help="Use this existing key of the token as the root CA key instead of generating one.")
@click.option("--pkcs11-pin-env", default=DEFAULT_PIN_ENV, show_default=True, metavar="VAR",
              help="Environment variable holding the token's user PIN.")
def init(directory: str | None, key_type: str, intermediate: bool, hostnames: tuple[str, ...], ca_name: str,
         passphrase_env: str, listen: str, crl_listen: str, public_url: str, metrics_listen: str,
         pkcs11_module: str, pkcs11_token: str, pkcs11_key_label: str, pkcs11_pin_env: str) -> None:
    """Create a new CA, TLS certificate and config in DIR."""
    from estkit.cli.initdir import InitError, TokenKeys, init_dir
    d = resolve_dir(directory)
    token = None
    if pkcs11_module or pkcs11_token or pkcs11_key_label:
        if not (pkcs11_module and pkcs11_token):
            raise click.ClickException("--pkcs11-module and --pkcs11-token go together")
        token = TokenKeys(TokenSettings(module=pkcs11_module, pin_env=pkcs11_pin_env), pkcs11_token,
                          pkcs11_key_label)
    try:
        kt = check_key_type_name(key_type)
        split_listen(listen, "--listen")
        if crl_listen:
            split_listen(crl_listen, "--crl-listen")
        if metrics_listen:
            split_listen(metrics_listen, "--metrics-listen")
        init_dir(d, key_type=kt, intermediate=intermediate, hostnames=hostnames, common_name=ca_name,
                 passphrase_env=passphrase_env, listen=listen, crl_listen=crl_listen,
                 public_url=public_url, metrics_listen=metrics_listen, token=token)
    except (InitError, ValueError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    from estkit.cli.perms import secure_dir
    for fix in secure_dir(d):  # DIR existed before, made with a laxer mode
        click.echo(f"fixed permissions: {fix}", err=True)
    click.echo(f"Initialised {d}: CA certificate for clients to trust: {d / 'ca.pem'}")


@cli.command()
@DirOption
@click.option("--listen", default=None, help="HOST:PORT (default: server.listen of the config).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: config, 0 = cores).")
@click.option("--coap-listen", default=None, metavar="HOST:PORT",
              help="Also serve EST-coaps (RFC 9148, CoAP over DTLS) on this UDP address (default: server.coap_listen).")
@click.option("--verbose", is_flag=True)
@click.option("--pkcs11-pin-env", default=None, metavar="VAR",
              help="Environment variable holding the PKCS#11 token PIN (default: pkcs11.pin_env of the config).")
def serve(directory: str | None, listen: str | None, workers: int | None, coap_listen: str | None,
          verbose: bool, pkcs11_pin_env: str | None) -> None:
    """Serve EST over HTTPS (and EST-coaps when asked) until SIGTERM or SIGINT."""
    _setup_logging(verbose)
    cfg = config_for(directory)
    if pkcs11_pin_env:
        cfg = dataclasses.replace(cfg, pkcs11=dataclasses.replace(cfg.pkcs11, pin_env=pkcs11_pin_env))
    from estkit.cli.serving import run_server
    try:
        code = run_server(cfg, listen=listen, workers=workers, coap_listen=coap_listen)
    except (ConfigError, StoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@cli.command()
@DirOption
@click.option("--listen", default="127.0.0.1:8443", show_default=True)
def quickstart(directory: str | None, listen: str) -> None:
    """Initialise DIR on first run (CA, demo user), print how to enroll, and serve."""
    from estkit.cli.initdir import init_dir
    d = resolve_dir(directory)
    pwfile = d / "demo-password"
    if not (d / "config.toml").exists():
        init_dir(d, listen=listen)
        password = generate_password()
        from estkit.cli.wiring import build_store
        build_store(config_for(str(d))).add_user(UserRecord(name="demo", password_hash=hash_password(password),
                                                         created_at=datetime.now(UTC)))
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
    password = pwfile.read_text().strip() if pwfile.exists() else "(see your own users)"
    host, port = split_listen(listen, "--listen")
    url = f"https://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/.well-known/est"
    ca = d / "ca.pem"
    bindir = os.path.dirname(sys.argv[0]) or "."
    banner = f"""
estkit is serving EST at {url}
  trust anchor (give it to clients): {ca}
  demo user: demo   password: {password}   (kept in {pwfile})
  commands: estkit and estclient are in {bindir}; `. {bindir}/activate` puts them on PATH

Enroll with curl and openssl:
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key \\
      -subj /CN=device1 -outform DER | openssl base64 -A > device.b64
  curl -sS --fail-with-body --cacert {ca} --user demo:{password} -H 'Content-Type: application/pkcs10' \\
      --data-binary @device.b64 {url}/simpleenroll | openssl base64 -d -A \\
      | openssl pkcs7 -inform DER -print_certs -out device.pem
  openssl verify -CAfile {ca} device.pem

Stop with Ctrl-C.
"""
    _setup_logging()
    from estkit.cli.serving import ListenError, run_server
    try:
        # The banner once the port listens: a port in use is one line, never a banner and a traceback.
        # Workers as config.toml says (0: one per core), like `estkit serve`.
        code = run_server(config_for(str(d)), listen=listen, on_ready=lambda: click.echo(banner))
    except (ConfigError, StoreError, ListenError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def _register_extensions() -> None:
    """The command groups that live in their own modules, one module per group
    (imported here, at start, so that a broken module fails loudly)."""
    from estkit.cli import admin, backup, ca_cmds, certs, clusterdemo, policy_cmds, users
    cli.add_command(users.user)
    for module in (admin, ca_cmds, certs, policy_cmds, backup, clusterdemo):
        module.register(cli)


def main() -> None:
    """Console entry point."""
    from estkit.cli.perms import private_umask
    private_umask()  # keys, store (SQLite's -wal/-shm too), config: 0600 in a 0700 DIR
    _register_extensions()
    cli(prog_name="estkit")


