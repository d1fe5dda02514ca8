"""The configuration file (``DIR/config.toml``): load, validate, resolve paths.

Every key is checked; an unknown key or a value of the wrong type is a
:class:`ConfigError` naming the key.  Relative paths are relative to DIR.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from estkit.ca.pkcs11_uri import DEFAULT_PIN_ENV, Pkcs11Uri, TokenSettings, is_pkcs11_uri
from estkit.ca.rules import Policy, PolicyError, policy_from_mapping
from estkit.ca.profile import DIGEST_ALGORITHMS, EKU_NAMES, KEY_USAGE_NAMES, Profile
from estkit.protocol.constants import OPERATIONS
from estkit.protocol.keys import check_key_type_name

__all__ = ["ConfigError", "ServerConfig", "StoreConfig", "CaConfig", "Config", "load_config", "resolve_dir", "CONFIG_NAME"]

CONFIG_NAME = "config.toml"


class ConfigError(Exception):
    """The configuration is wrong; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    """The ``[server]`` table."""

    listen: str = "127.0.0.1:8443"
    tls_cert: str = "tls/server.pem"
    tls_key: str = "tls/server.key"
    bootstrap_trust: tuple[str, ...] = ()
    max_body_bytes: int = 65536
    body_timeout_seconds: int = 30
    workers: int = 0
    default_label: str = "default"
    realm: str = "estkit"
    access_log: bool = True
    crl_listen: str = ""
    # The OCSP responder (RFC 6960) over plain HTTP: its own HOST:PORT, or the
    # crl_listen value to share that listener ("" = off); who signs (a delegated
    # responder certificate estkit issues and renews, or the CA key); how far
    # ahead nextUpdate lies.
    ocsp_listen: str = ""
    ocsp_signer: str = "delegated"
    ocsp_next_update_seconds: int = 3600
    # Prometheus /metrics over plain HTTP (estkit.server.metrics); empty: off.
    metrics_listen: str = ""
    # Hostile or broken clients (server/transport.py): a TLS handshake, the
    # first request header after it, a request header once started, and an
    # idle kept-alive connection each get this long; each worker keeps at most
    # max_connections open (0: three quarters of the open-file limit, at most
    # 1024) and closes the one idle longest to admit a new one.
    handshake_timeout_seconds: int = 10
    header_timeout_seconds: int = 15
    keepalive_timeout_seconds: int = 30
    max_connections: int = 0
    # Failed authentications (wrong passwords, Basic or Digest) a client address,
    # and a user name, may make a minute before 429 (estkit.server.throttle); 0: no limit.
    auth_address_failures_per_minute: int = 10
    auth_user_failures_per_minute: int = 30
    # Password verifications (scrypt, 16 MiB each) at once per worker; 0: cores / workers, at least 1.
    auth_max_parallel: int = 0
    # The server's own TLS certificate (estkit.ca.server_cert): renewed from its CA, when a CA of
    # this estkit issued it, once less than this many days are left (0: never); each worker looks
    # this often, and loads a certificate another worker renewed.
    tls_renew_before_days: int = 30
    tls_renew_check_seconds: int = 3600
    # EST-coaps (RFC 9148) over DTLS 1.2 on this UDP HOST:PORT ("" = off; the usual
    # port is 5684), served by worker 0 (server/coap/service.py); DTLS sessions in
    # all and per client address, and how long an idle session is kept.  The
    # handshake timeout and body size are the HTTPS ones.
    coap_listen: str = ""
    coap_max_sessions: int = 1024
    coap_max_sessions_per_address: int = 16
    coap_idle_timeout_seconds: int = 120
    # Stopping (SIGTERM, server/drain.py): /readyz answers 503 for drain_seconds
    # while the port still accepts (behind a balancer: longer than its health
    # check takes to notice), then in-flight requests get stop_timeout_seconds.
    drain_seconds: int = 0
    stop_timeout_seconds: int = 30
    # Behind a load balancer (README, "Running a cluster"): the PROXY protocol v2
    # header on the TLS listener, and a plain-HTTP listener for a TLS-terminating
    # proxy (HOST:PORT or unix:/path), both only from trusted_proxies (IPs or CIDRs).
    proxy_protocol: bool = False
    proxy_listen: str = ""
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    """The ``[store]`` table besides ``url``: the connection pool of each
    worker (PostgreSQL; SQLite keeps its own) and how long to wait for the
    database before a request gets 503 with Retry-After."""

    pool_size: int = 5
    pool_max_overflow: int = 10
    pool_timeout_seconds: int = 5
    connect_timeout_seconds: int = 3


@dataclass(frozen=True)
class CaConfig:
    """One ``[cas.NAME]`` table: a CA certificate, its key and its chain to the root."""

    name: str
    cert: str
    key: str
    chain: tuple[str, ...] = ()
    key_passphrase_env: str = ""
    # RSA CA keys: sign certificates and CRLs with RSASSA-PSS (RFC 4055) instead of PKCS#1 v1.5.
    rsa_pss: bool = False
    # Served by /cacerts besides the chain: after a root key rollover the old
    # root and the OldWithNew / NewWithOld link certificates (RFC 7030 §4.1.3).
    extra_certs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole file, validated, with DIR."""

    dir: Path
    server: ServerConfig
    store_url: str
    cas: dict[str, CaConfig]
    labels: dict[str, Profile]
    # [policies.NAME] tables in file order: the first whose selectors match applies (estkit.ca.authz).
    policies: tuple[Policy, ...] = ()
    # [pkcs11]: the module for CA keys named by PKCS#11 URIs, and the PIN's environment variable.
    pkcs11: TokenSettings = TokenSettings()
    store: StoreConfig = StoreConfig()

    def path(self, p: str) -> Path:
        """A configured path, resolved against DIR."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.dir / q


def resolve_dir(option: str | None) -> Path:
    """``--dir``, else ``$ESTKIT_DIR``, else ``./estkit-data``."""
    return Path(option or os.environ.get("ESTKIT_DIR") or "estkit-data")


_TYPES: dict[Any, tuple[type, ...]] = {str: (str,), int: (int,), bool: (bool,), "str|None": (str,),
                                       "int|None": (int,)}


def _check(section: str, raw: dict[str, Any], cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate a table against a dataclass's fields: names and types."""
    spec = {f.name: f for f in fields(cls) if f.name not in skip}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in spec:
            raise ConfigError(f"unknown key '{section}.{key}' (known: {', '.join(sorted(spec))})")
        ftype = str(spec[key].type)
        if ftype.startswith("tuple"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"'{section}.{key}' must be a list of strings")
            value = tuple(value)
        elif ftype in ("bool",):
            if not isinstance(value, bool):
                raise ConfigError(f"'{section}.{key}' must be true or false")
        elif ftype.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"'{section}.{key}' must be an integer")
        elif ftype.startswith("str"):
            if not isinstance(value, str):
                raise ConfigError(f"'{section}.{key}' must be a string")
        out[key] = value
    return out


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    v = doc.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"'{key}' must be a table")
    return v


def load_config(directory: Path) -> Config:
    """Read and validate ``DIR/config.toml``."""
    path = directory / CONFIG_NAME
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run 'estkit init --dir {directory}' first") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key in doc:
        if key not in ("server", "store", "cas", "labels", "policies", "pkcs11"):
            raise ConfigError(f"unknown table '{key}' (known: server, store, cas, labels, policies, pkcs11)")

    server = ServerConfig(**_check("server", _table(doc, "server"), ServerConfig))
    if server.max_body_bytes <= 0 or server.workers < 0 or server.body_timeout_seconds <= 0:
        raise ConfigError("'server.max_body_bytes' and 'server.body_timeout_seconds' must be positive, "
                          "'server.workers' not negative")
    for key in ("handshake_timeout_seconds", "header_timeout_seconds", "keepalive_timeout_seconds"):
        if getattr(server, key) <= 0:
            raise ConfigError(f"'server.{key}' must be positive")
    if server.max_connections < 0:
        raise ConfigError("'server.max_connections' must not be negative (0: from the open-file limit)")
    if server.tls_renew_check_seconds <= 0:
        raise ConfigError("'server.tls_renew_check_seconds' must be positive")
    for key in ("auth_address_failures_per_minute", "auth_user_failures_per_minute", "auth_max_parallel",
                "tls_renew_before_days", "drain_seconds"):
        if getattr(server, key) < 0:
            raise ConfigError(f"'server.{key}' must not be negative")
    _split_listen(server.listen, "server.listen")
    if server.crl_listen:
        _split_listen(server.crl_listen, "server.crl_listen")
    if server.ocsp_listen:
        _split_listen(server.ocsp_listen, "server.ocsp_listen")
    if server.ocsp_signer not in ("delegated", "ca"):
        raise ConfigError(f"'server.ocsp_signer' must be \"delegated\" or \"ca\", got {server.ocsp_signer!r}")
    if server.ocsp_next_update_seconds <= 0:
        raise ConfigError("'server.ocsp_next_update_seconds' must be positive")
    if server.metrics_listen:
        _split_listen(server.metrics_listen, "server.metrics_listen")
    if server.coap_listen:
        _split_listen(server.coap_listen, "server.coap_listen")
    for key in ("coap_max_sessions", "coap_max_sessions_per_address", "coap_idle_timeout_seconds"):
        if getattr(server, key) <= 0:
            raise ConfigError(f"'server.{key}' must be positive")
    if server.stop_timeout_seconds <= 0:
        raise ConfigError("'server.stop_timeout_seconds' must be positive")
    _check_proxies(server)

    store = _table(doc, "store")
    pool = StoreConfig(**_check("store", {k: v for k, v in store.items() if k != "url"}, StoreConfig))
    for f in fields(StoreConfig):
        if getattr(pool, f.name) <= 0:
            raise ConfigError(f"'store.{f.name}' must be positive")
    url = os.environ.get("ESTKIT_STORE_URL") or store.get("url", "sqlite:///estkit.db")
    if not isinstance(url, str):
        raise ConfigError("'store.url' must be a string")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = "sqlite:///" + str((directory / url[len("sqlite:///"):]).resolve())

    cas: dict[str, CaConfig] = {}
    for name, raw in _table(doc, "cas").items():
        if not isinstance(raw, dict):
            raise ConfigError(f"'cas.{name}' must be a table")
        vals = _check(f"cas.{name}", raw, CaConfig, skip=("name",))
        for req in ("cert", "key"):
            if req not in vals:
                raise ConfigError(f"'cas.{name}.{req}' is required")
        cas[name] = CaConfig(name=name, **vals)
        if is_pkcs11_uri(cas[name].key):
            try:
                Pkcs11Uri.parse(cas[name].key)
            except ValueError as exc:
                raise ConfigError(f"'cas.{name}.key': {exc}") from None
    if not cas:
        raise ConfigError("no CA configured: add a [cas.NAME] table")

    if any(k in _table(doc, "pkcs11") for k in ("pin", "pin_value", "user_pin")):
        raise ConfigError(f"'pkcs11': the PIN never goes into the configuration; set {DEFAULT_PIN_ENV} "
                          "(or the variable pkcs11.pin_env names), or use pin-source=file:... in the key's URI")
    pkcs11 = TokenSettings(**_check("pkcs11", _table(doc, "pkcs11"), TokenSettings))
    if not pkcs11.pin_env:
        raise ConfigError(f"'pkcs11.pin_env' must name an environment variable (default {DEFAULT_PIN_ENV}); "
                          "the PIN itself never goes into the configuration")

    labels: dict[str, Profile] = {}
    for name, raw in _table(doc, "labels").items():
        if not isinstance(raw, dict):
            raise ConfigError(f"'labels.{name}' must be a table")
        labels[name] = _profile(name, raw, cas)
    if not labels:
        raise ConfigError("no label configured: add a [labels.NAME] table")
    if server.default_label not in labels:
        raise ConfigError(f"'server.default_label' names unknown label {server.default_label!r}")
    policies: list[Policy] = []
    for name, raw in _table(doc, "policies").items():
        if not isinstance(raw, dict):
            raise ConfigError(f"'policies.{name}' must be a table")
        try:
            pol = policy_from_mapping(name, raw, selectors=True)
        except PolicyError as exc:
            raise ConfigError(f"'policies.{name}': {exc}") from None
        for lab in pol.labels or ():
            if lab not in labels:
                raise ConfigError(f"'policies.{name}.labels' names unknown label {lab!r}")
        policies.append(pol)
    return Config(dir=directory, server=server, store_url=url, cas=cas, labels=labels, policies=tuple(policies),
                  pkcs11=pkcs11, store=pool)


def _check_proxies(server: ServerConfig) -> None:
    """``trusted_proxies`` are addresses or networks; a proxy feature needs them."""
    import ipaddress
    for p in server.trusted_proxies:
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError:
            raise ConfigError(f"'server.trusted_proxies': {p!r} is not an IP address or network") from None
    if (server.proxy_protocol or server.proxy_listen) and not server.trusted_proxies:
        raise ConfigError("'server.proxy_protocol' and 'server.proxy_listen' need 'server.trusted_proxies' "
                          "(the addresses of the load balancers)")
    if server.proxy_listen and not server.proxy_listen.startswith("unix:"):
        host, _port = _split_listen(server.proxy_listen, "server.proxy_listen")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError("'server.proxy_listen' must be an IP address and port, or unix:/path") from None
        # Its requests carry the client's identity in headers: never on a public address.
        if ip.is_unspecified or not (ip.is_loopback or ip.is_private):
            raise ConfigError(f"'server.proxy_listen' must be a loopback or private address (or unix:/path), "
                              f"not {host}")


def _profile(name: str, raw: dict[str, Any], cas: dict[str, CaConfig]) -> Profile:
    sec = f"labels.{name}"
    # RFC 7030 §3.2.2: a label must not be an operation name.
    if name in OPERATIONS or not name or "/" in name:
        raise ConfigError(f"'{sec}': a label may not be empty, contain '/' or be an operation name")
    vals = _check(sec, raw, Profile, skip=("label",))
    vals.setdefault("ca", next(iter(cas)))
    if vals["ca"] not in cas:
        raise ConfigError(f"'{sec}.ca' names unknown CA {vals['ca']!r}")
    try:
        if "allowed_key_types" in vals:
            vals["allowed_key_types"] = tuple(check_key_type_name(k) for k in vals["allowed_key_types"])
            if not vals["allowed_key_types"]:
                raise ConfigError(f"'{sec}.allowed_key_types' may not be empty")
        if vals.get("serverkeygen_key_type"):
            vals["serverkeygen_key_type"] = check_key_type_name(vals["serverkeygen_key_type"])
    except ValueError as exc:
        raise ConfigError(f"'{sec}': {exc}") from None
    for ku in vals.get("key_usage", ()):
        if ku not in KEY_USAGE_NAMES:
            raise ConfigError(f"'{sec}.key_usage': unknown {ku!r} (one of {', '.join(KEY_USAGE_NAMES)})")
    for eku in vals.get("extended_key_usage", ()):
        if eku not in EKU_NAMES and not all(p.isdigit() for p in eku.split(".")):
            raise ConfigError(f"'{sec}.extended_key_usage': unknown {eku!r} (one of {', '.join(EKU_NAMES)} "
                              "or a dotted OID)")
    for alg in vals.get("digest_auth", ()):
        if alg not in DIGEST_ALGORITHMS:
            raise ConfigError(f"'{sec}.digest_auth': unknown {alg!r} (one of {', '.join(DIGEST_ALGORITHMS)})")
    if vals.get("validity_days", 1) <= 0:
        raise ConfigError(f"'{sec}.validity_days' must be positive")
    return Profile(label=name, **vals)


def _split_listen(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
        raise ConfigError(f"'{key}' must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


split_listen = _split_listen
