"""CA keys in a PKCS#11 token (issue 15), end to end against SoftHSM2.

One fresh token per module run (its own SOFTHSM2_CONF and token directory in a
temp dir).  ``estkit init`` generates the CA key in it, ``estkit serve`` runs 2
workers that sign with it, and real clients enroll: curl + openssl, strongSwan's
``pki``, estkit's ``estclient`` (enroll, re-enroll, serverkeygen, fullcmc
enroll/renew/revoke); the CRL and OCSP responses (signed by the CA key itself)
are checked by openssl against ca.pem.  No private key of the CA is anywhere in
the data directory.  The failures: wrong PIN, unknown object, missing module at
serve and init (one line naming the URI, no traceback); the token taken away
under a running server (503, /readyz says so, nothing stored) and back (signing
recovers).  Import of a file-based CA with ``estkit ca import-key`` and a
rollover inside the token; RSA with PSS under an intermediate.
"""

from __future__ import annotations

import base64
import sys
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import ESTKIT, ServerProcess, basic, estkit, free_port, https, require_tool, run, server
from test_client_cli import IDENT, PW, SECRET, USER, assert_pair, cli
from test_e2e_strongswan import _req, _url, pki

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "2468-token"
TOKEN = "estkit"
AUTH = {"Authorization": basic("alice", "alice-pw"), "Content-Type": "application/pkcs10"}


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh SoftHSM2 token; the environment that reaches it (config and PIN)."""
    require_tool("softhsm2-util", "pkcs11-tool", "openssl", "curl", "pki")
    if not Path(MODULE).exists():
        require_tool(MODULE)  # fails under ESTKIT_REQUIRE_ALL=1, skips elsewhere
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf), "ESTKIT_PKCS11_PIN": PIN}
    run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "97531-so"], env=env)
    return env


def _configure(doc: dict[str, Any]) -> None:
    base = dict(doc["labels"]["default"])
    doc["labels"]["default"]["cmc_secrets_file"] = "cmc-secrets"
    doc["labels"]["kg"] = {**base, "serverkeygen": True}
    doc["policies"] = {"devices": {"kinds": ["cert"]}}
    doc["server"]["ocsp_signer"] = "ca"  # OCSP responses signed by the token's key itself


@pytest.fixture(scope="module")
def srv(token: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("hsm") / "d"
    d.mkdir()
    (d / "cmc-secrets").write_text(f"{IDENT}:{SECRET}\n")
    init = ("--pkcs11-module", MODULE, "--pkcs11-token", TOKEN, "--key-type", "ec:P-384",
            "--public-url", f"http://127.0.0.1:{free_port()}")
    with server(d, users={USER: PW, "alice": "alice-pw"}, configure=_configure, init_args=init, workers=2,
                env=token) as s:
        yield s


def _crl_url(srv: ServerProcess) -> str:
    return "http://" + srv.config()["server"]["crl_listen"] + "/crl/default.crl"


def _pem_certs(srv: ServerProcess) -> list[x509.Certificate]:
    return [c for p in (srv.dir / "ca").glob("*.pem") for c in x509.load_pem_x509_certificates(p.read_bytes())]


def _private_keys_under(directory: Path) -> list[Any]:
    """Every private key any file under ``directory`` holds (PEM blocks or whole DER files)."""
    found = []
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blobs = [b"-----BEGIN" + part for part in data.split(b"-----BEGIN")[1:]] or [data]
        for blob in blobs:
            for load in (serialization.load_pem_private_key, serialization.load_der_private_key):
                try:
                    found.append(load(blob, None))
                    break
                except (ValueError, TypeError):
                    continue
    return found


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _ca_keys_in_files(d: Path) -> list[Any]:
    """The private keys under ``d`` whose public key is one of its CA certificates'."""
    ca = {_spki(c.public_key()) for p in (d / "ca").glob("*.pem") for c in x509.load_pem_x509_certificates(p.read_bytes())}
    return [k for k in _private_keys_under(d) if _spki(k.public_key()) in ca]


# -- init: the key is in the token, and only there ----------------------------------------------------------


def test_ok_init_keeps_no_ca_private_key_in_the_data_dir(srv: ServerProcess, token: dict[str, str]) -> None:
    key = srv.config()["cas"]["default"]["key"]
    assert key == f"pkcs11:token={TOKEN};object=estkit-root-ca;type=private"
    assert PIN not in (srv.dir / "config.toml").read_text()
    assert _private_keys_under(srv.dir), "the TLS key at least is a file: the scan must find it"
    assert not _ca_keys_in_files(srv.dir)
    # The token holds it as sensitive and never extractable (pkcs11-tool reads the attributes).
    out = run(["pkcs11-tool", "--module", MODULE, "--token-label", TOKEN, "--login", "--pin", PIN,
               "--list-objects", "--type", "privkey"], env=token).stdout.decode()
    assert "estkit-root-ca" in out and "never extractable" in out and "always sensitive" in out


# -- the clients ------------------------------------------------------------------------------------------


def test_ok_curl_openssl_enroll(srv: ServerProcess, tmp_path: Path) -> None:
    run(["sh", "-c", f"cd {tmp_path} && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                     "-keyout dev.key -subj /CN=hsm-curl -outform DER 2>/dev/null | openssl base64 > dev.b64"])
    run(["sh", "-c", f"cd {tmp_path} && curl -sf --cacert {srv.ca_pem} --user alice:alice-pw "
                     f"-H 'Content-Type: application/pkcs10' --data-binary @dev.b64 {srv.url('simpleenroll')} "
                     "| openssl base64 -d -A | openssl pkcs7 -inform DER -print_certs -out dev.pem"])
    out = run(["openssl", "verify", "-CAfile", str(srv.ca_pem), str(tmp_path / "dev.pem")])
    assert b": OK" in out.stdout
    assert b"ecdsa-with-SHA384" in run(["openssl", "x509", "-in", str(tmp_path / "dev.pem"), "-noout", "-text"]).stdout


def test_ok_strongswan_pki_enroll_and_reenroll(srv: ServerProcess, tmp_path: Path) -> None:
    key, csr = _req(tmp_path, "gw", "gw.hsm.example", "gw.hsm.example")
    cert = tmp_path / "gw.pem"
    cert.write_bytes(pki("--est", "--url", _url(srv), "--cacert", str(srv.ca_pem), "--in", str(csr),
                         "--userpass", "alice:alice-pw", "--outform", "pem").stdout)
    run(["openssl", "verify", "-CAfile", str(srv.ca_pem), str(cert)])
    _, csr2 = _req(tmp_path, "gw2", "gw.hsm.example", "gw.hsm.example", key=key)
    cert2 = tmp_path / "gw2.pem"
    cert2.write_bytes(pki("--est", "--url", _url(srv), "--cacert", str(srv.ca_pem), "--in", str(csr2),
                          "--cert", str(cert), "--key", str(key), "--outform", "pem").stdout)
    run(["openssl", "verify", "-CAfile", str(srv.ca_pem), str(cert2)])


def test_ok_estclient_enroll_reenroll_serverkeygen(srv: ServerProcess, tmp_path: Path) -> None:
    k, c = tmp_path / "dev.key", tmp_path / "dev.pem"
    cli(srv, "enroll", "--user", USER, "--cn", "hsm-dev", "--key-out", str(k), "--cert-out", str(c))
    first = assert_pair(srv, c, k)
    cli(srv, "reenroll", "--cert", str(c), "--key", str(k), "--key-out", str(tmp_path / "k2.pem"),
        "--cert-out", str(tmp_path / "c2.pem"))
    assert assert_pair(srv, tmp_path / "c2.pem", tmp_path / "k2.pem") != first
    # The SignedData around the server-generated key is signed by the token (RFC 7030 §4.4.2).
    cli(srv, "serverkeygen", "--user", USER, "--cn", "hsm-kg", "--key-out", str(tmp_path / "kg.key"),
        "--cert-out", str(tmp_path / "kg.pem"), label="kg")
    assert_pair(srv, tmp_path / "kg.pem", tmp_path / "kg.key")


def test_ok_fullcmc_then_revoke_crl_and_ocsp(srv: ServerProcess, token: dict[str, str], tmp_path: Path) -> None:
    cli(srv, "fullcmc", "enroll", "--cn", "hsm-cmc", "--secret-env", "CMC_SECRET", "--identification", IDENT,
        "--key-out", str(tmp_path / "m.key"), "--cert-out", str(tmp_path / "m.pem"), env={"CMC_SECRET": SECRET})
    assert_pair(srv, tmp_path / "m.pem", tmp_path / "m.key")
    out = cli(srv, "fullcmc", "revoke", "--cert", str(tmp_path / "m.pem"), "--key", str(tmp_path / "m.key"),
              "--reason", "keyCompromise")
    assert b"revoked" in out.stdout
    serial = x509.load_pem_x509_certificate((tmp_path / "m.pem").read_bytes()).serial_number
    crl_der = b""
    for _ in range(100):  # the worker that revoked has the new CRL; poll until the listener serves it
        with urllib.request.urlopen(_crl_url(srv), timeout=10) as r:
            crl_der = r.read()
        if x509.load_der_x509_crl(crl_der).get_revoked_certificate_by_serial_number(serial) is not None:
            break
        time.sleep(0.1)
    (tmp_path / "crl.der").write_bytes(crl_der)
    checked = run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-CAfile", str(srv.ca_pem),
                   "-noout"])
    assert b"verify OK" in checked.stdout + checked.stderr
    run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-out", str(tmp_path / "crl.pem")])
    bad = run(["openssl", "verify", "-crl_check", "-CAfile", str(srv.ca_pem), "-CRLfile", str(tmp_path / "crl.pem"),
               str(tmp_path / "m.pem")], check=False)
    assert bad.returncode != 0 and b"certificate revoked" in bad.stdout + bad.stderr
    # The CLI signs with the token too (its own process, its own login).
    estkit("crl", "update", "--dir", str(srv.dir), env=token)
    estkit("crl", "export", "--dir", str(srv.dir), "--pem", "--out", str(tmp_path / "cli.crl"), env=token)
    checked = run(["openssl", "crl", "-in", str(tmp_path / "cli.crl"), "-CAfile", str(srv.ca_pem), "-noout"])
    assert b"verify OK" in checked.stdout + checked.stderr
    ocsp_url = "http://" + srv.config()["server"]["ocsp_listen"] + "/ocsp"
    resp = run(["openssl", "ocsp", "-issuer", str(srv.ca_pem), "-cert", str(tmp_path / "m.pem"), "-url", ocsp_url,
                "-CAfile", str(srv.ca_pem)])
    text = (resp.stdout + resp.stderr).decode()
    assert "Response verify OK" in text and ": revoked" in text


# -- failures at start ---------------------------------------------------------------------------------------


def _copy(srv: ServerProcess, dest: Path, replace: dict[str, str]) -> Path:
    """The server's data directory copied, with its config edited."""
    shutil.copytree(srv.dir, dest, ignore=shutil.ignore_patterns("serve-*.log", "metrics", "*-lock"))
    text = (dest / "config.toml").read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    (dest / "config.toml").write_text(text)
    return dest


@pytest.mark.parametrize("env,replace,message", [
    ({"ESTKIT_PKCS11_PIN": "0000"}, {}, "the token refused the PIN (wrong PIN)"),
    ({"ESTKIT_PKCS11_PIN": ""}, {"pin_env = \"ESTKIT_PKCS11_PIN\"": "pin_env = \"NO_SUCH_PIN_VAR\""},
     "the token PIN is not set (environment variable NO_SUCH_PIN_VAR)"),
    ({}, {"object=estkit-root-ca": "object=no-such-key"}, "no such private key in the token"),
    ({}, {"token=estkit;": "token=no-such-token;"}, "no such token"),
    ({}, {MODULE: "/nonexistent/libpkcs11.so"}, "cannot load the PKCS#11 module /nonexistent/libpkcs11.so"),
], ids=["fail/wrong-pin", "fail/pin-variable-unset", "fail/unknown-object", "fail/unknown-token", "fail/no-module"])
def test_fail_serve_refuses_to_start(srv: ServerProcess, token: dict[str, str], tmp_path: Path,
                                     env: dict[str, str], replace: dict[str, str], message: str) -> None:
    d = _copy(srv, tmp_path / "d", replace)
    p = run([ESTKIT, "serve", "--dir", str(d), "--listen", f"127.0.0.1:{free_port()}"], check=False, timeout=30,
            env={**token, **env})
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "Traceback" not in err and message in err and "'cas.default.key': pkcs11:token=" in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args,message", [
    (["--pkcs11-key-label", "no-such-key"], "no such public key in the token"),
    (["--key-type", "ed25519"], "key type ed25519 is not supported in a token"),
    (["--pkcs11-token", "no-such-token"], "no such token"),
], ids=["fail/unknown-key-label", "fail/key-type", "fail/unknown-token"])
def test_fail_init(token: dict[str, str], tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--pkcs11-module": MODULE, "--pkcs11-token": TOKEN}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    p = estkit("init", "--dir", str(tmp_path / "d"), *[x for kv in base.items() for x in kv], check=False, env=token)
    err = p.stderr.decode()
    assert p.returncode == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "d" / "config.toml").exists()


def test_fail_init_wrong_pin(token: dict[str, str], tmp_path: Path) -> None:
    p = estkit("init", "--dir", str(tmp_path / "d"), "--pkcs11-module", MODULE, "--pkcs11-token", TOKEN,
               check=False, env={**token, "ESTKIT_PKCS11_PIN": "1111"})
    err = p.stderr.decode()
    assert p.returncode == 1 and "wrong PIN" in err and "Traceback" not in err, err


# -- RSA with PSS under an intermediate, an existing key as root; import and rollover -------------------------


def test_ok_rsa_pss_intermediate_over_an_existing_root_key(srv: ServerProcess, token: dict[str, str],
                                                           tmp_path: Path) -> None:
    d = tmp_path / "rsa"
    # The first server's root key (already in the token) becomes this CA's root; the intermediate is new.
    estkit("init", "--dir", str(d), "--pkcs11-module", MODULE, "--pkcs11-token", TOKEN, "--intermediate",
           "--key-type", "rsa:2048", "--pkcs11-key-label", "estkit-root-ca", env=token)
    text = (d / "config.toml").read_text().replace('key_passphrase_env = ""', 'key_passphrase_env = ""\nrsa_pss = true')
    (d / "config.toml").write_text(text)
    assert not _ca_keys_in_files(d)
    root = x509.load_pem_x509_certificate((d / "ca/root.pem").read_bytes())
    assert root.public_key() == _pem_certs(srv)[0].public_key() or any(
        c.public_key() == root.public_key() for c in _pem_certs(srv))
    with server(d, users={"alice": "alice-pw"}, env=token) as s:
        r = https(s, "POST", "simpleenroll", _csr_b64(), headers=AUTH)
        assert r.status == 200, r.body
        pem = tmp_path / "leaf.pem"
        run(["sh", "-c", f"echo '{r.body.decode()}' | openssl base64 -d -A | openssl pkcs7 -inform DER "
                         f"-print_certs -out {pem}"])
        run(["openssl", "verify", "-CAfile", str(d / "ca.pem"), "-untrusted", str(d / "ca/issuing.pem"), str(pem)])
        assert b"rsassaPss" in run(["openssl", "x509", "-in", str(pem), "-noout", "-text"]).stdout


def _csr_b64() -> bytes:
    return base64.b64encode(build_csr(generate_key("ec:P-256"), cn="hsm-leaf"))


def test_ok_import_key_then_rollover_in_the_token(token: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "file-ca"
    estkit("init", "--dir", str(d), "--key-type", "ec:P-256")
    old_root = x509.load_pem_x509_certificate((d / "ca/root.pem").read_bytes())
    out = estkit("ca", "import-key", "--dir", str(d), "--pkcs11-module", MODULE, "--pkcs11-token", TOKEN,
                 "--label", "imported-root", env=token).stdout.decode()
    assert "imported" in out and not (d / "ca/root.key").exists()
    cfg = (d / "config.toml").read_text()
    assert f'key = "pkcs11:token={TOKEN};object=imported-root;type=private"' in cfg and f'module = "{MODULE}"' in cfg
    assert not _private_keys_under(d / "ca")
    # Rollover: the old key (in the token) signs NewWithOld, the new key is made in the token.
    estkit("ca", "rollover", "--dir", str(d), env=token)
    assert not _private_keys_under(d / "ca")
    assert "object=estkit-root-g2-ca" in (d / "config.toml").read_text()
    links = x509.load_pem_x509_certificates((d / "ca/rollover-2.pem").read_bytes())
    new_root = x509.load_pem_x509_certificate((d / "ca/root-2.pem").read_bytes())
    old_with_new, new_with_old = links[1], links[2]
    new_with_old.verify_directly_issued_by(old_root)
    old_with_new.verify_directly_issued_by(new_root)
    (tmp_path / "old.pem").write_bytes(old_root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "nwo.pem").write_bytes(new_with_old.public_bytes(serialization.Encoding.PEM))
    run(["openssl", "verify", "-CAfile", str(d / "ca.pem"), "-untrusted", str(tmp_path / "nwo.pem"),
         str(d / "tls/server-2.pem")])


# -- the token goes away under a running server, and comes back (the tests after it use the token again) ------


def _issued_count(srv: ServerProcess) -> int:
    with sqlite3.connect(srv.dir / "estkit.db") as db:
        return int(db.execute("select count(*) from certificates").fetchone()[0])


def _readyz(srv: ServerProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"https://localhost:{srv.port}/readyz", context=srv.ssl_context(),
                                    timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_ok_token_lost_gives_503_and_signing_recovers(srv: ServerProcess, token: dict[str, str],
                                                      tmp_path: Path) -> None:
    tokens = Path(token["SOFTHSM2_CONF"]).parent / "tokens"
    (tok,) = list(tokens.iterdir())
    before = _issued_count(srv)
    shutil.move(tok, tmp_path / "away")  # the token is "removed"
    try:
        for _ in range(4):  # each worker in turn
            r = https(srv, "POST", "simpleenroll", _csr_b64(), headers=AUTH)
            assert r.status == 503 and b"PKCS#11 token" in r.body, (r.status, r.body)
        status, body = 0, ""
        for _ in range(50):  # /readyz keeps its answer 2 s
            status, body = _readyz(srv)
            if status == 503:
                break
            time.sleep(0.1)
        assert (status, body.strip()) == (503, "ca default: the key cannot sign")
        assert _issued_count(srv) == before  # nothing half-issued
        assert "CA key pkcs11:token=estkit;object=estkit-root-ca;type=private cannot sign" in srv.log()
        assert "Traceback" not in srv.log()
    finally:
        shutil.move(tmp_path / "away", tok)
    ok = 0
    for _ in range(60):  # both workers recover (a module is re-initialised at most once a second)
        r = https(srv, "POST", "simpleenroll", _csr_b64(), headers=AUTH)
        ok = ok + 1 if r.status == 200 else 0
        if ok >= 4:
            break
        time.sleep(0.1)
    assert ok >= 4
    assert _readyz(srv)[0] == 200 or _wait_ready(srv)
    # The recovery is logged by the worker whose key failed; the kernel may have sent it
    # none of the requests above (SO_REUSEPORT picks by hash): more go until one reaches it.
    recovered = "CA key pkcs11:token=estkit;object=estkit-root-ca;type=private signs again"
    for _ in range(40):
        if recovered in srv.log():
            break
        assert https(srv, "POST", "simpleenroll", _csr_b64(), headers=AUTH).status == 200
    assert recovered in srv.log()


def _wait_ready(srv: ServerProcess) -> bool:
    for _ in range(50):
        if _readyz(srv)[0] == 200:
            return True
        time.sleep(0.1)
    return False


# -- threads and processes sign at once ----------------------------------------------------------------------


def test_ok_threads_and_a_forked_child_sign_concurrently(srv: ServerProcess, token: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """16 threads share one signer (their calls into the module serialised: a module
    initialised without CKF_OS_LOCKING_OK crashed under them), then a forked child signs
    with the same object (its module initialised anew): every signature verifies."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from estkit.ca.external import verify_raw
    from estkit.ca.pkcs11 import Pkcs11Signer
    from estkit.ca.pkcs11_uri import Pkcs11Uri, TokenSettings
    for k, v in token.items():
        monkeypatch.setenv(k, v)
    cert = x509.load_pem_x509_certificate((srv.dir / "ca/root.pem").read_bytes())
    signer = Pkcs11Signer(Pkcs11Uri.parse(srv.config()["cas"]["default"]["key"]), TokenSettings(module=MODULE),
                          cert.public_key())  # type: ignore[arg-type]
    payloads = [os.urandom(64) for _ in range(200)]
    with ThreadPoolExecutor(16) as pool:
        sigs = list(pool.map(signer.sign_data, payloads))
    assert all(verify_raw(cert.public_key(), signer.scheme, s, p)  # type: ignore[arg-type]
               for s, p in zip(sigs, payloads))
    from estkit.ca import pkcs11 as p11
    pid = os.fork()
    if pid == 0:  # the child: the parent finalised the module before forking; the child initialises its own
        try:
            ok = not p11._libs[MODULE].initialized and verify_raw(cert.public_key(), signer.scheme, signer.sign_data(b"child"), b"child")  # type: ignore[arg-type]
        finally:
            os._exit(0 if ok else 3)
    assert os.waitpid(pid, 0)[1] == 0
    assert verify_raw(cert.public_key(), signer.scheme, signer.sign_data(b"parent"), b"parent")  # type: ignore[arg-type]


def test_fail_a_refused_pin_is_not_tried_again(srv: ServerProcess, token: dict[str, str], tmp_path: Path) -> None:
    """Every wrong PIN brings a token closer to locking it: a process tries a refused PIN once.
    A new PIN in the pin-source file is tried (and here logs in)."""
    pin = tmp_path / "pin"
    pin.write_text("9999\n")
    script = f"""
import sys
from pathlib import Path
from estkit.ca.pkcs11 import Pkcs11Signer, TokenError
from estkit.ca.pkcs11_uri import Pkcs11Uri, TokenSettings
uri = Pkcs11Uri.parse("pkcs11:token={TOKEN};object=estkit-root-ca?pin-source=file:{pin}")
for attempt in range(2):
    try:
        Pkcs11Signer(uri, TokenSettings(module="{MODULE}")).probe()
    except TokenError as exc:
        print(exc)
Path("{pin}").write_text("{PIN}")
Pkcs11Signer(uri, TokenSettings(module="{MODULE}")).probe()
print("logged in")
"""
    out = run([sys.executable, "-c", script], env=token).stdout.decode().splitlines()
    assert "the token refused the PIN (wrong PIN)" in out[0]
    assert "the token refused this PIN before; not trying it again" in out[1]
    assert out[2] == "logged in"


# -- the server's own TLS certificate is renewed through the token --------------------------------------------


def test_ok_tls_certificate_renewal_signs_with_the_token(srv: ServerProcess, token: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS renewal (estkit.ca.server_cert) signs through the CA's signer: with a
    PKCS#11 CA, the token; the data directory still holds no CA private key."""
    import datetime as dt

    from estkit.ca.server_cert import ServerCertificate
    from estkit.cli.common import config_for
    from estkit.cli.wiring import build_authority, build_store
    for k, v in token.items():
        monkeypatch.setenv(k, v)
    cfg = config_for(str(srv.dir))
    ca = build_authority(cfg, build_store(cfg))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=810)  # 15 days before the TLS certificate expires
    tls = ServerCertificate(ca, cfg.path(cfg.server.tls_cert), cfg.path(cfg.server.tls_key),
                            renew_before=dt.timedelta(days=30), clock=lambda: later)
    old = tls.current
    saved = {p: p.read_bytes() for p in (tls.cert_path, tls.key_path)}
    tls.refresh()
    new = x509.load_pem_x509_certificates(cfg.path(cfg.server.tls_cert).read_bytes())[0]
    for p, data in saved.items():  # the shared server keeps serving a certificate valid today
        p.write_bytes(data)
    assert new.serial_number != old.serial_number
    root = x509.load_pem_x509_certificate((srv.dir / "ca/root.pem").read_bytes())
    new.verify_directly_issued_by(root)  # signed by the key in the token
    run(["openssl", "verify", "-attime", str(int(later.timestamp())), "-CAfile", str(srv.ca_pem),
         str(cfg.path(cfg.server.tls_cert))])  # valid from the (fake) clock's now
    for f in srv.dir.rglob("*"):
        if f.is_file() and f != cfg.path(cfg.server.tls_key) and b"PRIVATE KEY" in f.read_bytes():
            pytest.fail(f"{f} holds a private key")


@pytest.mark.parametrize("key_type", ["ec:P-256", "rsa:3072", "rsa:4096"],
                         ids=["ok/p256", "ok/rsa3072", "ok/rsa4096"])
def test_ok_every_key_type_generates_and_signs_in_the_token(srv: ServerProcess, token: dict[str, str],
                                                            monkeypatch: pytest.MonkeyPatch, key_type: str) -> None:
    """The key types the issue names beyond those the server above uses (P-384, RSA-2048):
    generated in the token, then a CA certificate and a CRL signed there verify."""
    import datetime as dt

    from estkit.ca.create import ca_name, make_ca_certificate
    from estkit.ca.pkcs11 import Pkcs11Signer
    from estkit.ca.pkcs11_keys import generate_in_token
    from estkit.ca.pkcs11_uri import Pkcs11Uri, TokenSettings
    for k, v in token.items():
        monkeypatch.setenv(k, v)
    uri = Pkcs11Uri.parse(f"pkcs11:token={TOKEN};object=kt-{key_type.replace(':', '-')};type=private")
    settings = TokenSettings(module=MODULE)
    public = generate_in_token(uri, settings, key_type)
    signer = Pkcs11Signer(uri, settings, public)
    cert = make_ca_certificate(ca_name(f"Token {key_type}"), public, signer)
    cert.verify_directly_issued_by(cert)
    now = dt.datetime.now(dt.UTC)
    crl = signer.sign_crl(x509.CertificateRevocationListBuilder().issuer_name(cert.subject)
                          .last_update(now).next_update(now + dt.timedelta(days=1)))
    assert crl.is_signature_valid(public)  # type: ignore[arg-type]
