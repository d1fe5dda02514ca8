"""Config validation: every bad key is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import estkit, read_config, write_config

from estkit.config import ConfigError, load_config

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg") / "data"
    estkit("init", "--dir", str(d))
    return d


def test_ok_init_config_loads(base_dir: Path) -> None:
    cfg = load_config(base_dir)
    assert cfg.server.default_label == "default" and "default" in cfg.labels
    assert cfg.store_url.startswith("sqlite:////")


@pytest.mark.parametrize("mutate,message", [
    pytest.param(lambda d: d["server"].update(lisen="x"), "server.lisen", id="fail/unknown-server-key"),
    pytest.param(lambda d: d["server"].update(workers="two"), "server.workers", id="fail/wrong-type"),
    pytest.param(lambda d: d["server"].update(listen="nowhere"), "server.listen", id="fail/bad-listen"),
    pytest.param(lambda d: d["server"].update(coap_listen="nowhere"), "server.coap_listen", id="fail/bad-coap-listen"),
    pytest.param(lambda d: d["server"].update(coap_max_sessions=0), "server.coap_max_sessions",
                 id="fail/coap-max-sessions-zero"),
    pytest.param(lambda d: d["server"].update(coap_idle_timeout_seconds=-1), "server.coap_idle_timeout_seconds",
                 id="fail/coap-idle-timeout-negative"),
    pytest.param(lambda d: d["labels"]["default"].update(validity_dayz=3), "labels.default.validity_dayz",
                 id="fail/unknown-label-key"),
    pytest.param(lambda d: d["labels"]["default"].update(allowed_key_types=["dsa:1024"]), "labels.default",
                 id="fail/bad-key-type"),
    pytest.param(lambda d: d["labels"]["default"].update(key_usage=["sign_everything"]), "labels.default.key_usage",
                 id="fail/bad-key-usage"),
    pytest.param(lambda d: d["labels"]["default"].update(ca="nope"), "labels.default.ca", id="fail/unknown-ca"),
    pytest.param(lambda d: d["labels"].update(cacerts={"ca": "default"}), "labels.cacerts",
                 id="fail/label-is-operation-name"),
    pytest.param(lambda d: d["server"].update(default_label="ghost"), "server.default_label",
                 id="fail/default-label-missing"),
    pytest.param(lambda d: d.update(extra={"a": 1}), "extra", id="fail/unknown-table"),
    pytest.param(lambda d: d["cas"]["default"].pop("key"), "cas.default.key", id="fail/ca-key-missing"),
    pytest.param(lambda d: d["server"].update(auth_address_failures_per_minute=-1),
                 "server.auth_address_failures_per_minute", id="fail/negative-address-failures"),
    pytest.param(lambda d: d["server"].update(auth_user_failures_per_minute="30"),
                 "server.auth_user_failures_per_minute", id="fail/user-failures-not-int"),
    pytest.param(lambda d: d["server"].update(auth_max_parallel=-2), "server.auth_max_parallel",
                 id="fail/negative-max-parallel"),
    pytest.param(lambda d: d["cas"]["default"].update(key="pkcs11:token=t;object=k?pin-value=1234"),
                 "'cas.default.key': PKCS#11 URI: pin-value is refused", id="fail/pkcs11-pin-in-uri"),
    pytest.param(lambda d: d["cas"]["default"].update(key="pkcs11:object=k"), "'cas.default.key': PKCS#11 URI: "
                 "name the token", id="fail/pkcs11-uri-without-token"),
    pytest.param(lambda d: d.update(pkcs11={"module": "/x.so", "pin": "1234"}),
                 "'pkcs11': the PIN never goes into the configuration", id="fail/pkcs11-pin-in-config"),
    pytest.param(lambda d: d.update(pkcs11={"modul": "/x.so"}), "pkcs11.modul", id="fail/pkcs11-unknown-key"),
    pytest.param(lambda d: d["cas"]["default"].update(rsa_pss="yes"), "cas.default.rsa_pss",
                 id="fail/rsa-pss-not-bool"),
    # Issue 14: cluster keys.
    pytest.param(lambda d: d["server"].update(drain_seconds=-1), "server.drain_seconds", id="fail/negative-drain"),
    pytest.param(lambda d: d["server"].update(stop_timeout_seconds=0), "server.stop_timeout_seconds",
                 id="fail/zero-stop-timeout"),
    pytest.param(lambda d: d["server"].update(proxy_protocol=True), "server.trusted_proxies",
                 id="fail/proxy-protocol-without-trusted-proxies"),
    pytest.param(lambda d: d["server"].update(proxy_listen="127.0.0.1:9000"), "server.trusted_proxies",
                 id="fail/proxy-listen-without-trusted-proxies"),
    pytest.param(lambda d: d["server"].update(trusted_proxies=["10.0.0.0/33"]), "server.trusted_proxies",
                 id="fail/bad-trusted-proxy"),
    pytest.param(lambda d: d["server"].update(proxy_listen="8.8.8.8:9000", trusted_proxies=["10.0.0.1"]),
                 "server.proxy_listen", id="fail/proxy-listen-public-address"),
    pytest.param(lambda d: d["server"].update(proxy_listen="0.0.0.0:9000", trusted_proxies=["10.0.0.1"]),
                 "server.proxy_listen", id="fail/proxy-listen-any-address"),
    pytest.param(lambda d: d["server"].update(proxy_listen="proxy:9000", trusted_proxies=["10.0.0.1"]),
                 "server.proxy_listen", id="fail/proxy-listen-host-name"),
    pytest.param(lambda d: d["store"].update(pool_size=0), "store.pool_size", id="fail/zero-pool-size"),
    pytest.param(lambda d: d["store"].update(pool_timeout_seconds="5"), "store.pool_timeout_seconds",
                 id="fail/pool-timeout-not-int"),
    pytest.param(lambda d: d["store"].update(pool_sise=3), "store.pool_sise", id="fail/unknown-store-key"),
])
def test_config_errors_name_the_key(base_dir: Path, tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = read_config(base_dir)
    mutate(doc)
    write_config(tmp_path, doc)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert message in str(exc.value)


@pytest.mark.parametrize("server,store", [
    ({"proxy_protocol": True, "trusted_proxies": ["127.0.0.1", "10.0.0.0/8", "fd00::/8"]}, {}),
    ({"proxy_listen": "unix:/run/estkit/proxy.sock", "trusted_proxies": ["127.0.0.1"]}, {}),
    ({"proxy_listen": "10.1.2.3:9000", "trusted_proxies": ["10.1.2.1"], "drain_seconds": 2}, {}),
    ({"stop_timeout_seconds": 5}, {"pool_size": 20, "pool_max_overflow": 5, "pool_timeout_seconds": 2,
                                   "connect_timeout_seconds": 2}),
], ids=["ok/proxy-protocol", "ok/proxy-listen-unix", "ok/proxy-listen-private", "ok/pool"])
def test_ok_cluster_keys(base_dir: Path, tmp_path: Path, server: dict[str, object], store: dict[str, object]) -> None:
    doc = read_config(base_dir)
    doc["server"].update(server)
    doc.setdefault("store", {}).update(store)
    write_config(tmp_path, doc)
    cfg = load_config(tmp_path)
    for k, v in server.items():
        assert getattr(cfg.server, k) == (tuple(v) if isinstance(v, list) else v)
    for k, v in store.items():
        assert getattr(cfg.store, k) == v


def test_fail_serve_with_bad_config_is_a_clear_error(base_dir: Path, tmp_path: Path) -> None:
    doc = read_config(base_dir)
    doc["server"]["lisen"] = "127.0.0.1:1"
    write_config(tmp_path, doc)
    p = estkit("serve", "--dir", str(tmp_path), check=False)
    assert p.returncode != 0 and b"server.lisen" in p.stderr and b"Traceback" not in p.stderr


def test_fail_init_refuses_to_overwrite(base_dir: Path) -> None:
    before = (base_dir / "ca" / "root.key").read_bytes()
    p = estkit("init", "--dir", str(base_dir), check=False)
    assert p.returncode != 0 and b"refusing to overwrite" in p.stderr
    assert (base_dir / "ca" / "root.key").read_bytes() == before
    assert (base_dir / "ca" / "root.key").stat().st_mode & 0o777 == 0o600
