"""Bouncy Castle's Java EST client (Debian BC 1.72, ``org.bouncycastle.est``) against estkit.

tests/java/EstBc.java drives BC's ``JsseESTServiceBuilder`` / ``ESTService``; it is
compiled once per session with the JDK compiler module that Debian's
openjdk-17-jre-headless already ships (``java -m jdk.compiler/...``: no javac needed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REQUIRE_ALL, ServerProcess, https, require_tool, run, server

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

JAVA_SRC = Path(__file__).parent / "java" / "EstBc.java"
BC_DIR = Path(os.environ.get("ESTKIT_BC_JAR_DIR", "/usr/share/java"))
BC_JARS = ("bcprov.jar", "bcpkix.jar", "bcutil.jar", "bctls.jar")  # libbc{prov,pkix,util,tls}-java
USER, PASSWORD = "bcdevice", "bc-s3cret"


def require_jars(directory: Path, *names: str) -> list[Path]:
    """The jars' paths; like ``require_tool``: skip when missing on a laptop, fail
    under ESTKIT_REQUIRE_ALL=1."""
    paths = [directory / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        msg = f"required jar(s) not installed: {', '.join(missing)}"
        if REQUIRE_ALL:
            pytest.fail(msg + " (ESTKIT_REQUIRE_ALL=1)")
        pytest.skip(msg)
    return paths


@pytest.fixture(scope="session")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """EstBc compiled once, plus the BC jars, as a class path."""
    require_tool("java", "openssl")
    jars = require_jars(BC_DIR, *BC_JARS)
    out = tmp_path_factory.mktemp("estbc-classes")
    cp = os.pathsep.join(str(j) for j in jars)
    run(["java", "-m", "jdk.compiler/com.sun.tools.javac.Main", "-nowarn", "-cp", cp, "-d", str(out),
         str(JAVA_SRC)], timeout=120)
    return os.pathsep.join([str(out), cp])


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, classpath: str) -> Iterator[ServerProcess]:
    def configure(doc: dict[str, Any]) -> None:
        doc["labels"]["iot"] = {"ca": "default", "validity_days": 30, "extended_key_usage": ["serverAuth"],
                                "allowed_key_types": ["ec:P-256"]}
    with server(tmp_path_factory.mktemp("bc") / "data", users={USER: PASSWORD}, configure=configure,
                init_args=("--intermediate",)) as s:
        yield s


def estbc(classpath: str, srv: ServerProcess, op: str, *args: str, check: bool = True) -> Any:
    """Run one BC operation against the server (BC's own socket timeout is 15 s)."""
    return run(["java", "-cp", classpath, "EstBc", op, "--server", f"localhost:{srv.port}",
                "--ca", str(srv.ca_pem), *args], check=check, timeout=60)


def _chain(classpath: str, srv: ServerProcess, tmp: Path, label: str | None = None) -> Path:
    chain = tmp / f"chain-{label or 'default'}.pem"
    estbc(classpath, srv, "cacerts", "--out", str(chain), *(("--label", label) if label else ()))
    return chain


def _verify(srv: ServerProcess, chain: Path, cert: Path) -> str:
    out = run(["openssl", "verify", "-CAfile", str(srv.ca_pem), "-untrusted", str(chain), str(cert)])
    assert out.stdout.decode().strip() == f"{cert}: OK"
    return run(["openssl", "x509", "-in", str(cert), "-noout", "-text"]).stdout.decode()


def _subjects(pem: Path) -> list[str]:
    text = pem.read_text()
    blocks = [b + "-----END CERTIFICATE-----\n" for b in text.split("-----END CERTIFICATE-----") if "BEGIN" in b]
    return [run(["openssl", "x509", "-noout", "-subject"], input=b).stdout.decode().strip() for b in blocks]


def _enroll(classpath: str, srv: ServerProcess, tmp: Path, name: str, cn: str, *extra: str) -> tuple[Path, Path]:
    key, cert = tmp / f"{name}.key", tmp / f"{name}.pem"
    estbc(classpath, srv, "enroll", "--user", USER, "--password", PASSWORD, "--cn", cn,
          "--key-out", str(key), "--out", str(cert), *extra)
    return key, cert


def test_ok_cacerts(classpath: str, srv: ServerProcess, tmp_path: Path) -> None:
    chain = _chain(classpath, srv, tmp_path)
    assert sorted(_subjects(chain)) == ["subject=CN = estkit Issuing CA", "subject=CN = estkit Root CA"]


@pytest.mark.parametrize("label, expected", [
    pytest.param(None, ["attribute 1.2.840.113549.1.1.1", "attribute 1.2.840.10045.2.1", "oid 1.3.101.112"],
                 id="ok/default-rsa-ec-ed25519"),
    pytest.param("iot", ["attribute 1.2.840.10045.2.1"], id="ok/label-ec-only"),
])
def test_ok_csrattrs(classpath: str, srv: ServerProcess, tmp_path: Path, label: str | None,
                     expected: list[str]) -> None:
    out = tmp_path / "attrs.txt"
    estbc(classpath, srv, "csrattrs", "--out", str(out), *(("--label", label) if label else ()))
    assert sorted(out.read_text().splitlines()) == sorted(expected)


def test_ok_simpleenroll_basic_then_reenroll_with_client_cert(classpath: str, srv: ServerProcess,
                                                              tmp_path: Path) -> None:
    chain = _chain(classpath, srv, tmp_path)
    key, cert = _enroll(classpath, srv, tmp_path, "dev", "dev1.example.com")
    text = _verify(srv, chain, cert)
    assert "Subject: CN = dev1.example.com" in text and "DNS:dev1.example.com" in text
    assert "TLS Web Client Authentication" in text
    # BC sends the request without credentials first and reads nothing of the 401
    # before retrying with Basic: that 401 must have an empty body (else BC fails
    # with "Stream closed before limit fully read").
    log = srv.log()
    first, second = "- simpleenroll - 401", f"user:{USER} simpleenroll - 200"
    assert first in log and second in log and log.index(first) < log.index(second)
    r = https(srv, "POST", "simpleenroll", b"", headers={"Content-Type": "application/pkcs10"})
    assert r.status == 401 and r.body == b"" and r.header("Content-Length") == "0"
    # simplereenroll, authenticated by the TLS client certificate alone (renew: same key).
    renewed = tmp_path / "dev-renewed.pem"
    estbc(classpath, srv, "reenroll", "--cert", str(cert), "--key", str(key), "--out", str(renewed))
    text2 = _verify(srv, chain, renewed)
    assert "Subject: CN = dev1.example.com" in text2 and "DNS:dev1.example.com" in text2
    serial = ["openssl", "x509", "-noout", "-serial", "-in"]
    assert run([*serial, str(cert)]).stdout != run([*serial, str(renewed)]).stdout
    assert "cert:CN=dev1.example.com simplereenroll - 200" in srv.log()


def test_ok_labelled_enroll(classpath: str, srv: ServerProcess, tmp_path: Path) -> None:
    chain = _chain(classpath, srv, tmp_path, label="iot")
    _, cert = _enroll(classpath, srv, tmp_path, "iot", "sensor7.example.com", "--label", "iot")
    text = _verify(srv, chain, cert)
    assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" not in text
    assert f"user:{USER} simpleenroll iot 200" in srv.log()


@pytest.mark.parametrize("op, args, status", [
    pytest.param("enroll", ("--user", USER, "--password", "wrong"), "401", id="fail/wrong-password"),
    pytest.param("enroll", ("--user", "nobody", "--password", PASSWORD), "401", id="fail/unknown-user"),
    pytest.param("cacerts", ("--label", "nosuchlabel"), "404", id="fail/unknown-label"),
])
def test_fail_clean_error(classpath: str, srv: ServerProcess, tmp_path: Path, op: str, args: tuple[str, ...],
                          status: str) -> None:
    extra = ("--cn", "x.example.com", "--key-out", str(tmp_path / "k.pem")) if op == "enroll" else ()
    p = estbc(classpath, srv, op, *args, *extra, "--out", str(tmp_path / "out.pem"), check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith(f"error: {status} "), err
    assert "Stream closed" not in err and not (tmp_path / "out.pem").exists()
