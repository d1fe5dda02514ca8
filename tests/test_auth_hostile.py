"""Hostile clients against authentication, on a real server: user names are not
discoverable by timing, failed passwords are throttled per address and per user
name (429 + Retry-After), old password hashes verify and are upgraded on the next
login, and failed authentications are audited, aggregated (issue 11)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from policy_support import write_key
from support import ServerProcess, basic, estkit, server

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

PKCS10 = {"Content-Type": "application/pkcs10"}
# [server] auth_address_failures_per_minute and auth_user_failures_per_minute of the test server
# (low: a bucket refills at its rate a minute, and the tests must outpace the refill).
PER_ADDRESS, PER_USER = 4, 12

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    seconds: float


class Client:
    """Keep-alive HTTPS requests to a ServerProcess from one loopback source address
    (127.0.0.0/8 is all loopback on Linux: each test address is another client)."""

    def __init__(self, srv: ServerProcess, source: str, *, cert: tuple[Path, Path] | None = None) -> None:
        ctx = srv.ssl_context(*cert) if cert else srv.ssl_context()
        self.conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=60,
                                                source_address=(source, 0))
        self.srv = srv

    def post(self, op: str, body: bytes | None = None, *, user: tuple[str, str] | None = None) -> Answer:
        headers = dict(PKCS10)
        if user is not None:
            headers["Authorization"] = basic(*user)
        if body is None:  # credentials are checked after the body arrives: a valid one
            body = ANY_CSR
        t = time.perf_counter()
        self.conn.request("POST", f"/.well-known/est/{op}", body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        took = time.perf_counter() - t
        if r.getheader("Connection", "").lower() == "close":
            self.conn.close()
        return Answer(r.status, r.headers, data, took)

    def close(self) -> None:
        self.conn.close()


def csr_body(cn: str) -> bytes:
    return base64.b64encode(build_csr(generate_key("ec:P-256"), cn=cn)) + b"\n"


ANY_CSR = csr_body("any")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("hostile") / "data"
    users = {"alice": "pw-alice", "bob": "pw-bob", "carol": "pw-carol", "dave": "pw-dave", "erin": "pw-erin",
             **{f"ann{i}": f"pw-ann{i}" for i in range(3)}}

    def configure(doc: dict[str, Any]) -> None:
        doc["server"].update(auth_address_failures_per_minute=PER_ADDRESS, auth_user_failures_per_minute=PER_USER)
        doc["labels"]["dig"] = {**doc["labels"]["default"], "digest_auth": ["SHA-256"]}
    from support import init_server_dir
    init_server_dir(d)
    estkit("user", "add", "dig", "--dir", str(d), "--password-stdin", "--digest", input="pw-dig\n")
    with server(d, users=users, configure=configure, workers=1) as s:
        estkit("user", "set", "carol", "--disable", "--dir", str(d))
        yield s


# -- item 1: the same cost whether the user exists, is disabled or not ------------------------------


def _median_failure(srv: ServerProcess, source: str, user: tuple[str, str], tries: int = PER_ADDRESS) -> float:
    c = Client(srv, source)
    try:
        times = []
        for _ in range(tries):
            a = c.post("simpleenroll", user=user)
            assert a.status == 401, (a.status, a.body)
            times.append(a.seconds)
        return statistics.median(times)
    finally:
        c.close()


def test_unknown_and_disabled_users_cost_as_much_as_a_wrong_password(srv: ServerProcess) -> None:
    """Each case from its own address, fewer tries than the per-address limit."""
    _median_failure(srv, "127.0.0.60", ("alice", "warm-up"), tries=1)  # first connection of the worker
    known = _median_failure(srv, "127.0.0.61", ("alice", "wrong"))
    unknown = _median_failure(srv, "127.0.0.62", ("nobody-here", "wrong"))
    disabled = _median_failure(srv, "127.0.0.63", ("carol", "pw-carol"))
    assert unknown >= 0.5 * known, f"unknown user {unknown * 1000:.1f} ms vs known user {known * 1000:.1f} ms"
    assert disabled >= 0.5 * known, f"disabled user {disabled * 1000:.1f} ms vs known user {known * 1000:.1f} ms"


# -- item 2: throttling --------------------------------------------------------------------------


def _exhaust(srv: ServerProcess, source: str, user: str) -> tuple[int, Answer]:
    """Wrong passwords from ``source`` for ``user`` until a 429 that holds for 3 s more
    (the buckets refill meanwhile); the 401s before it and that 429."""
    c = Client(srv, source)
    failed = 0
    try:
        for i in range(40):
            a = c.post("simpleenroll", user=(user, f"wrong-{i}"))
            if a.status == 401:
                failed += 1
                continue
            assert a.status == 429, a
            if int(a.headers["Retry-After"]) >= 3:
                return failed, a
        raise AssertionError(f"no lasting 429 after {failed} failures")
    finally:
        c.close()


@pytest.mark.parametrize("case", ["fail/address-throttled", "ok/other-address", "fail/correct-from-throttled"])
def test_throttle_per_address(srv: ServerProcess, case: str) -> None:
    """After PER_ADDRESS failures from one address it gets 429 + Retry-After naming the rule,
    then even with the correct password; the same user from another address still enrolls."""
    i = ["fail/address-throttled", "ok/other-address", "fail/correct-from-throttled"].index(case)
    src, user = f"127.0.0.{10 + i}", (f"ann{i}", f"pw-ann{i}")
    failed, refusal = _exhaust(srv, src, user[0])
    assert failed >= PER_ADDRESS
    body = refusal.body.decode()
    assert 3 <= int(refusal.headers["Retry-After"]) <= 60
    assert body.count("\n") == 1 and "rule 'server.auth_address_failures_per_minute'" in body, body
    c = Client(srv, "127.0.0.20" if case == "ok/other-address" else src)
    a = c.post("simpleenroll", csr_body(f"ann{i}"), user=user)
    c.close()
    if case == "ok/other-address":
        assert a.status == 200, a
    else:
        assert a.status == 429 and "auth_address_failures_per_minute" in a.body.decode(), a


def test_throttle_per_user_name(srv: ServerProcess) -> None:
    """Failures for one user name from many addresses (each within its own limit) lock that
    name: a correct password from a fresh address gets 429 naming the per-user rule."""
    failed = 0
    for i in range(1, 20):
        n, refusal = _exhaust(srv, f"127.0.1.{i}", "dave")
        failed += n
        if "auth_user_failures_per_minute" in refusal.body.decode():
            break
    else:
        raise AssertionError("the user name was never throttled")
    assert failed >= PER_USER
    c = Client(srv, "127.0.1.200")
    a = c.post("simpleenroll", csr_body("dave"), user=("dave", "pw-dave"))
    other = c.post("simpleenroll", csr_body("erin"), user=("erin", "pw-erin"))
    c.close()
    assert a.status == 429 and "auth_user_failures_per_minute" in a.body.decode(), a
    assert other.status == 200, other  # another user from the same address is not affected


def test_digest_failures_are_throttled_and_the_client_gets_429(srv: ServerProcess) -> None:
    """Wrong Digest responses count like wrong Basic passwords (from 127.0.0.1, the
    address no other test here uses), and estkit's client rebuilds the 429 as
    TooManyRequests with its Retry-After."""
    from estkit.client import DigestAuth, EstClient
    from estkit.errors import TooManyRequests, Unauthorized

    def client(password: str) -> EstClient:
        return EstClient(f"https://localhost:{srv.port}/.well-known/est", trust=srv.ca_pem, label="dig",
                         auth=DigestAuth("dig", password))

    for i in range(PER_ADDRESS):
        with pytest.raises(Unauthorized):
            client(f"wrong-{i}").enroll(cn="dig")
    with pytest.raises(TooManyRequests) as exc:
        client("pw-dig").enroll(cn="dig")
    assert exc.value.status == 429 and exc.value.retry_after is not None and exc.value.retry_after >= 1
    assert "auth_address_failures_per_minute" in exc.value.reason


# -- item 3: old hashes verify and are upgraded ------------------------------------------------------


def _old_hash(password: str, n: int = 2**14) -> str:
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=8, p=1, dklen=32)
    return f"scrypt${n}$8$1${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def _stored_hash(srv: ServerProcess, name: str) -> str:
    from estkit.store import open_store
    store = open_store("sqlite:///" + str((srv.dir / "estkit.db").resolve()), upgrade=False)
    try:
        user = store.get_user(name)
        assert user is not None
        return user.password_hash
    finally:
        store.close()


def test_new_hashes_use_owasp_parameters(srv: ServerProcess) -> None:
    from estkit.ca.passwords import OWASP_EQUIVALENT, ScryptParams
    n, r, p = (int(x) for x in _stored_hash(srv, "alice").split("$")[1:4])
    assert ScryptParams(n, r, p) in OWASP_EQUIVALENT


def test_old_hash_verifies_and_is_upgraded_on_login(srv: ServerProcess) -> None:
    from dataclasses import replace

    from estkit.store import open_store
    store = open_store("sqlite:///" + str((srv.dir / "estkit.db").resolve()), upgrade=False)
    user = store.get_user("bob")
    assert user is not None
    store.update_user(replace(user, password_hash=_old_hash("pw-bob")))
    store.close()
    assert _stored_hash(srv, "bob").startswith("scrypt$16384$")
    c = Client(srv, "127.0.0.30")
    a = c.post("simpleenroll", csr_body("bob"), user=("bob", "pw-bob"))
    b = c.post("simpleenroll", csr_body("bob"), user=("bob", "pw-bob"))
    c.close()
    assert a.status == 200 and b.status == 200, (a, b)
    assert _stored_hash(srv, "bob").startswith("scrypt$16384$8$5$")


# -- item 5: failed authentication is audited, aggregated ---------------------------------------------


def test_auth_failures_audited_aggregated(tmp_path: Path) -> None:
    d = tmp_path / "data"
    with server(d, users={"alice": "pw-alice"}, workers=1) as s:
        # a certificate, then revoked: presenting it is a refused certificate
        key = generate_key("ec:P-256")
        c = Client(s, "127.0.0.40")
        a = c.post("simpleenroll", base64.b64encode(build_csr(key, cn="revoked-dev")) + b"\n",
                   user=("alice", "pw-alice"))
        assert a.status == 200, a
        from estkit.protocol.framing import decode_b64
        from estkit.protocol.pkcs7 import parse_certs_only
        cert = parse_certs_only(decode_b64(a.body))[0]
        for _ in range(3):
            assert c.post("simpleenroll", user=("alice", "wrong")).status == 401
        assert c.post("simpleenroll", user=("mallory", "guess")).status == 401
        c.close()
        estkit("revoke", format(cert.serial_number, "x"), "--dir", str(d))
        (tmp_path / "dev.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        write_key(tmp_path / "dev.key", key)
        tc = Client(s, "127.0.0.41", cert=(tmp_path / "dev.pem", tmp_path / "dev.key"))
        for _ in range(2):
            assert tc.post("simplereenroll", csr_body("revoked-dev")).status == 403
        tc.close()
    rows = [json.loads(line) for line in
            estkit("audit", "--dir", str(d), "--event", "auth-failed", "--json").stdout.decode().splitlines()]
    # One row per identity, reason and minute: the failures may straddle a minute.
    counts: dict[str, int] = {}
    for r in rows:
        m = re.search(r": (\d+) failures? in the minute from", r["detail"])
        assert m, r
        counts[r["identity"]] = counts.get(r["identity"], 0) + int(m.group(1))
    assert counts == {"user:alice": 3, "user:mallory": 1, "cert:CN=revoked-dev": 2}, rows
    assert len(rows) <= 2 * len(counts), rows
    reasons = {r["identity"]: r["detail"] for r in rows}
    assert reasons["user:alice"].startswith("wrong user name or password: ")
    assert "revoked" in reasons["cert:CN=revoked-dev"]
    assert all(r["peer"].startswith("127.0.0.4") for r in rows)


def test_audit_unknown_event_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "data"
    estkit("init", "--dir", str(d))
    p = estkit("audit", "--dir", str(d), "--event", "auth-fialed", check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and "auth-failed" in err and "issued" in err and "revoked" in err, err

