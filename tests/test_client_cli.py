"""``estclient`` end to end against a real ``estkit serve``: every subcommand,
its exit codes, a 202 waited out while an operator approves, bootstrap by
fingerprint, and ``renew``: due, not due, and killed at every step of the
write and at random moments, after which key and certificate on disk always
match (``openssl x509 -pubkey`` vs ``openssl pkey -pubout``) and verify."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import VENV_BIN, ServerProcess, estkit, free_port, require_tool, run, server

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

ESTCLIENT = str(VENV_BIN / "estclient")
USER, PW = "cli-user", "cli-pw-9"
SECRET, IDENT = "cli-cmc-secret", "cli-dev"


def _configure(doc: dict[str, Any]) -> None:
    base = dict(doc["labels"]["default"])
    doc["labels"]["default"]["cmc_secrets_file"] = "cmc-secrets"
    doc["labels"]["held"] = {**base, "manual_approval": True, "pending_retry_after": 1}
    doc["labels"]["kg"] = {**base, "serverkeygen": True}
    # A device's certificate may ask for a server-generated key for another name on any label only
    # because this table grants it (without one: its own names on its own label, docs/policy.md).
    doc["policies"] = {"devices": {"kinds": ["cert"]}}
    doc["labels"]["link"] = {**base, "require_linking": True}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("client-cli") / "d"
    d.mkdir()
    (d / "cmc-secrets").write_text(f"{IDENT}:{SECRET}\n")
    with server(d, users={USER: PW}, configure=_configure) as s:
        yield s


def cli(srv: ServerProcess, *args: str, check: int | None = 0, input: str | None = None, trust: bool = True,
        env: dict[str, str] | None = None, label: str | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [ESTCLIENT, args[0], "--server", f"https://localhost:{srv.port}"]
    if len(args) > 1 and args[0] == "fullcmc":
        cmd = [ESTCLIENT, "fullcmc", args[1], "--server", f"https://localhost:{srv.port}"]
        args = args[1:]
    cmd += (["--trust", str(srv.ca_pem)] if trust else []) + (["--label", label] if label else []) + list(args[1:])
    p = run(cmd, input=input, check=False, env={"ESTCLIENT_PASSWORD": PW, **(env or {})}, timeout=120)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\n{p.stdout.decode()}\n{p.stderr.decode()}"
    return p


def assert_pair(srv: ServerProcess, cert: Path, key: Path, *, der: bool = False) -> str:
    """openssl: the key is the certificate's, and the certificate verifies; returns the serial."""
    require_tool("openssl")
    inform = ["-inform", "DER"] if der else []
    from_key = run(["openssl", "pkey", *inform, "-in", str(key), "-pubout"]).stdout
    from_cert = run(["openssl", "x509", *inform, "-in", str(cert), "-noout", "-pubkey"]).stdout
    assert from_key == from_cert and b"BEGIN PUBLIC KEY" in from_key
    if der:
        pem_path = cert.with_suffix(".conv.pem")
        run(["openssl", "x509", "-inform", "DER", "-in", str(cert), "-out", str(pem_path)])
        cert = pem_path
    run(["openssl", "verify", "-CAfile", str(srv.ca_pem), str(cert)])
    return run(["openssl", "x509", "-in", str(cert), "-noout", "-serial"]).stdout.decode().strip()


# -- the operations -----------------------------------------------------------------------

def test_cacerts_and_csrattrs(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("openssl")
    cli(srv, "cacerts", "--out", str(tmp_path / "ca.pem"))
    assert (tmp_path / "ca.pem").read_bytes() == srv.ca_pem.read_bytes()
    cli(srv, "cacerts", "--format", "der", "--out", str(tmp_path / "ca.p7"))
    printed = run(["openssl", "pkcs7", "-inform", "DER", "-in", str(tmp_path / "ca.p7"), "-print_certs"]).stdout
    assert b"estkit Root CA" in printed
    out = cli(srv, "csrattrs", label="link").stdout.decode()
    assert "key type: ec:P-256" in out and "challengePassword" in out


def test_bootstrap_by_fingerprint(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("openssl")
    fp = run(["openssl", "x509", "-in", str(srv.ca_pem), "-noout", "-fingerprint", "-sha256"]).stdout.decode()
    fp = fp.split("=", 1)[1].strip()
    bad = cli(srv, "cacerts", "--fingerprint", "00" * 32, "--out", str(tmp_path / "x.pem"), trust=False, check=6)
    assert b"not confirmed" in bad.stderr and not (tmp_path / "x.pem").exists()
    cli(srv, "cacerts", "--fingerprint", fp, "--out", str(tmp_path / "boot.pem"), trust=False)
    # Interactive: the fingerprint is shown and a person answers.
    no = cli(srv, "cacerts", "--bootstrap", "--out", str(tmp_path / "x.pem"), trust=False, input="n\n", check=6)
    assert fp.encode() in no.stderr and not (tmp_path / "x.pem").exists()
    cli(srv, "cacerts", "--bootstrap", "--out", str(tmp_path / "y.pem"), trust=False, input="y\n")
    assert (tmp_path / "y.pem").read_bytes() == (tmp_path / "boot.pem").read_bytes()
    cli(srv, "enroll", "--trust", str(tmp_path / "boot.pem"), "--user", USER, "--cn", "boot-dev",
        "--key-out", str(tmp_path / "k.pem"), "--cert-out", str(tmp_path / "c.pem"), trust=False)
    assert_pair(srv, tmp_path / "c.pem", tmp_path / "k.pem")


@pytest.mark.parametrize("fmt,pop,stdin", [("pem", False, False), ("der", False, True), ("pem", True, False)],
                         ids=["ok/pem-password-env", "ok/der-password-stdin", "ok/pop-linked"])
def test_enroll_then_reenroll(srv: ServerProcess, tmp_path: Path, fmt: str, pop: bool, stdin: bool) -> None:
    k, c = tmp_path / f"dev.{fmt}.key", tmp_path / f"dev.{fmt}.crt"
    extra = ["--password-stdin"] if stdin else []
    cli(srv, "enroll", "--user", USER, *extra, "--cn", "cli-dev", "--dns", "cli-dev.example", "--ip", "192.0.2.9",
        "--key-out", str(k), "--cert-out", str(c), "--format", fmt, *(["--pop"] if pop else []),
        input=PW + "\n" if stdin else None, env={"ESTCLIENT_PASSWORD": "unused"} if stdin else None)
    assert oct(k.stat().st_mode & 0o777) == "0o600"
    first = assert_pair(srv, c, k, der=fmt == "der")
    if fmt == "der":
        return
    text = run(["openssl", "x509", "-in", str(c), "-noout", "-ext", "subjectAltName"]).stdout
    assert b"DNS:cli-dev.example" in text and b"IP Address:192.0.2.9" in text
    cli(srv, "reenroll", "--cert", str(c), "--key", str(k), "--key-out", str(tmp_path / "k2.pem"),
        "--cert-out", str(tmp_path / "c2.pem"))
    assert assert_pair(srv, tmp_path / "c2.pem", tmp_path / "k2.pem") != first
    cli(srv, "reenroll", "--cert", str(c), "--key", str(k), "--same-key", "--cert-out", str(tmp_path / "c3.pem"))
    assert_pair(srv, tmp_path / "c3.pem", k)


def test_enroll_with_a_csr_file(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("openssl")
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "r.key"),
         "-subj", "/CN=csr-file", "-out", str(tmp_path / "r.csr")])
    cli(srv, "enroll", "--user", USER, "--csr", str(tmp_path / "r.csr"), "--cert-out", str(tmp_path / "r.pem"))
    assert_pair(srv, tmp_path / "r.pem", tmp_path / "r.key")


@pytest.mark.parametrize("encrypt", [False, True], ids=["ok/plain", "ok/encrypted-to-tls-cert"])
def test_serverkeygen(srv: ServerProcess, tmp_path: Path, encrypt: bool) -> None:
    tls: list[str] = []
    if encrypt:
        cli(srv, "enroll", "--user", USER, "--cn", "tls-for-kg", "--key-out", str(tmp_path / "t.key"),
            "--cert-out", str(tmp_path / "t.pem"))
        tls = ["--cert", str(tmp_path / "t.pem"), "--key", str(tmp_path / "t.key"), "--encrypt"]
    cli(srv, "serverkeygen", "--user", USER, "--cn", "kg-cli", *tls, "--key-out", str(tmp_path / "kg.key"),
        "--cert-out", str(tmp_path / "kg.pem"), label="kg")
    assert_pair(srv, tmp_path / "kg.pem", tmp_path / "kg.key")


def test_fullcmc_enroll_renew_revoke(srv: ServerProcess, tmp_path: Path) -> None:
    cli(srv, "fullcmc", "enroll", "--cn", "cmc-cli", "--secret-env", "CMC_SECRET", "--identification", IDENT,
        "--key-out", str(tmp_path / "m.key"), "--cert-out", str(tmp_path / "m.pem"), env={"CMC_SECRET": SECRET})
    first = assert_pair(srv, tmp_path / "m.pem", tmp_path / "m.key")
    cli(srv, "fullcmc", "renew", "--cert", str(tmp_path / "m.pem"), "--key", str(tmp_path / "m.key"),
        "--key-out", str(tmp_path / "m2.key"), "--cert-out", str(tmp_path / "m2.pem"))
    assert assert_pair(srv, tmp_path / "m2.pem", tmp_path / "m2.key") != first
    out = cli(srv, "fullcmc", "revoke", "--cert", str(tmp_path / "m2.pem"), "--key", str(tmp_path / "m2.key"),
              "--reason", "superseded")
    assert b"revoked" in out.stdout
    refused = cli(srv, "reenroll", "--cert", str(tmp_path / "m2.pem"), "--key", str(tmp_path / "m2.key"),
                  "--same-key", check=4)
    assert b"revoked" in refused.stderr


def test_pending_shows_the_wait_then_gets_the_certificate(srv: ServerProcess, tmp_path: Path) -> None:
    proc = subprocess.Popen([ESTCLIENT, "enroll", "--server", f"https://localhost:{srv.port}", "--trust",
                             str(srv.ca_pem), "--label", "held", "--user", USER, "--cn", "held-cli", "--retries", "60",
                             "--key-out", str(tmp_path / "h.key"), "--cert-out", str(tmp_path / "h.pem")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "ESTCLIENT_PASSWORD": PW})
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    m = re.search(r"request (\d+) is waiting for approval; waiting 1 s, until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", line)
    assert m, line
    estkit("requests", "approve", m.group(1), "--dir", str(srv.dir))
    assert proc.wait(60) == 0, proc.stderr.read().decode()
    assert_pair(srv, tmp_path / "h.pem", tmp_path / "h.key")


@pytest.mark.parametrize("case,code,text", [
    ("usage", 2, "--cn"),
    ("password-missing", 2, "needs a password"),
    ("auth", 3, "wrong user name or password"),
    ("refused", 4, "unknown CA label"),
    ("network", 5, "cannot connect"),
    ("trust", 6, "not trusted"),
    ("pending", 7, "waiting for approval"),
], ids=["fail/usage", "fail/usage-password", "fail/auth", "fail/refused", "fail/network", "fail/trust", "fail/pending"])
def test_exit_codes(srv: ServerProcess, tmp_path: Path, case: str, code: int, text: str) -> None:
    args = ["enroll", "--user", USER, "--cn", "exit-dev", "--key-out", str(tmp_path / "e.key")]
    env: dict[str, str] = {}
    label = None
    if case == "usage":
        args = ["enroll", "--user", USER, "--key-out", str(tmp_path / "e.key")]
    elif case == "password-missing":
        args += ["--password-env", "NO_SUCH_VAR"]
    elif case == "auth":
        env = {"ESTCLIENT_PASSWORD": "wrong"}
    elif case == "refused":
        label = "nosuch"
    elif case == "trust":
        other = tmp_path / "other"
        estkit("init", "--dir", str(other))
        args += ["--trust", str(other / "ca.pem")]
    elif case == "pending":
        label, args = "held", args + ["--retries", "0"]
    if case == "network":
        p = run([ESTCLIENT, *args[:1], "--server", f"https://localhost:{free_port()}", "--trust", str(srv.ca_pem),
                 *args[1:]], check=False, env={"ESTCLIENT_PASSWORD": PW})
    else:
        p = cli(srv, *args, check=None, env=env, label=label, trust=case != "trust")
    assert p.returncode == code, p.stderr.decode()
    assert text in p.stderr.decode()
    assert not (tmp_path / "e.key").exists()


# -- renew -------------------------------------------------------------------------------------

def _first(srv: ServerProcess, d: Path) -> None:
    cli(srv, "enroll", "--user", USER, "--cn", "renew-dev", "--dns", "renew-dev.example", "--dir", str(d))


def test_renew_not_due_then_due(srv: ServerProcess, tmp_path: Path) -> None:
    d = tmp_path / "cred"
    _first(srv, d)
    first = assert_pair(srv, d / "cert.pem", d / "key.pem")
    out = cli(srv, "renew", "--dir", str(d))  # a fresh certificate: far from the last third
    assert b"not due" in out.stdout
    assert assert_pair(srv, d / "cert.pem", d / "key.pem") == first
    out = cli(srv, "renew", "--dir", str(d), "--threshold", "1")  # less than all of it is left: due
    assert b"renewed" in out.stdout
    second = assert_pair(srv, d / "cert.pem", d / "key.pem")
    assert second != first
    subj = run(["openssl", "x509", "-in", str(d / "cert.pem"), "-noout", "-subject", "-ext", "subjectAltName"]).stdout
    assert b"CN=renew-dev" in subj.replace(b" = ", b"=") and b"DNS:renew-dev.example" in subj
    assert len(list(d.glob("gen-*"))) == 1


def _state(srv: ServerProcess, d: Path) -> str:
    return assert_pair(srv, d / "cert.pem", d / "key.pem")


@pytest.mark.parametrize("step,outcome", [("key-written", "old"), ("gen-written", "old"), ("switched", "new")],
                         ids=["ok/killed-after-key", "ok/killed-before-switch", "ok/killed-after-switch"])
def test_renew_killed_at_each_step(srv: ServerProcess, tmp_path: Path, step: str, outcome: str) -> None:
    d = tmp_path / "cred"
    _first(srv, d)
    old = _state(srv, d)
    p = cli(srv, "renew", "--dir", str(d), "--force", check=None, env={"ESTCLIENT_TEST_KILL_AT": step})
    assert p.returncode == -signal.SIGKILL
    now = _state(srv, d)
    assert (now == old) is (outcome == "old")
    cli(srv, "renew", "--dir", str(d), "--force")  # the next run completes and tidies up
    assert _state(srv, d) not in (old, now) and len(list(d.glob("gen-*"))) == 1


def test_renew_killed_at_random_moments(srv: ServerProcess, tmp_path: Path) -> None:
    d = tmp_path / "cred"
    _first(srv, d)
    started = time.monotonic()
    cli(srv, "renew", "--dir", str(d), "--force")
    duration = time.monotonic() - started
    rng = random.Random(7030)
    seen = {_state(srv, d)}
    outcomes = []
    for _ in range(10):
        before = _state(srv, d)
        proc = subprocess.Popen([ESTCLIENT, "renew", "--server", f"https://localhost:{srv.port}", "--trust",
                                 str(srv.ca_pem), "--dir", str(d), "--force"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 1.05) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = _state(srv, d)  # always a matching, verifying pair
        outcomes.append("old" if after == before else "new")
        seen.add(after)
    assert len(list(d.glob("gen-*"))) >= 1
    cli(srv, "renew", "--dir", str(d), "--force")
    assert len(list(d.glob("gen-*"))) == 1
    print("random kills:", outcomes)


def test_fail_renew_without_credentials(srv: ServerProcess, tmp_path: Path) -> None:
    p = cli(srv, "renew", "--dir", str(tmp_path / "empty"), check=2)
    assert b"holds no credentials" in p.stderr
