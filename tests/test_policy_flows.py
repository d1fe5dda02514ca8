"""One-time enrollment codes used in parallel (SQLite and PostgreSQL, 2 workers),
manual approval and rejection with real retries (authorization first), HTTP
Digest with curl, and what the audit trail holds (and never holds)."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from policy_support import PKCS10, audit, check_audit, enroll, fingerprint
from support import ServerProcess, estkit, fresh_database, https, init_server_dir, require_tool, run, server
from test_e2e_bouncycastle import classpath  # noqa: F401  (the compiled BC client, a session fixture)

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

ALICE = ("alice", "pw-alice")
DIGEST_PW = "digest pw 1"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_time_code_used_twice_in_parallel_issues_exactly_one(tmp_path: Path, backend: str,
                                                                  request: pytest.FixtureRequest) -> None:
    env = {"ESTKIT_STORE_URL": fresh_database(request.getfixturevalue("pg_url"))} if backend == "postgresql" else {}
    d = init_server_dir(tmp_path / "data", env=env)
    code = estkit("user", "add", "line-7", "--dir", str(d), "--one-time", "--expires", "7d",
                  env=env).stdout.decode().strip()
    estkit("user", "add", "late", "--dir", str(d), "--one-time", "--expires", "2020-01-01T00:00:00", env=env)
    assert len(code) >= 20
    with server(d, workers=2, env=env) as srv:
        csrs = [build_csr(generate_key("ec:P-256"), cn=f"device-{i}") for i in range(8)]
        replies: list[Any] = [None] * len(csrs)
        barrier = threading.Barrier(len(csrs))

        def go(i: int) -> None:
            barrier.wait()
            replies[i] = enroll(srv, csrs[i], user=("line-7", code))
        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(csrs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status for r, _ in replies)
        assert statuses.count(200) == 1, [(r.status, r.body) for r, _ in replies]
        assert all(s in (200, 401, 403) for s in statuses)
        assert all(b"already used" in r.body for r, _ in replies if r.status != 200)
        winner = next(i for i, (r, _) in enumerate(replies) if r.status == 200)
        cert = replies[winner][1]
        check_audit(srv, "user:line-7", csrs[winner], "default", event="issued", cert=cert)
        # The code stops working; an expired one never worked.
        r, _ = enroll(srv, build_csr(generate_key("ec:P-256"), cn="again"), user=("line-7", code))
        assert r.status == 401 and b"already used" in r.body
        r, _ = enroll(srv, build_csr(generate_key("ec:P-256"), cn="late"), user=("late", "x"))
        assert r.status == 401
    # After the server stopped: the audit trail and the store agree, and never hold the code.
    events = audit(srv, "--identity", "user:line-7", "--limit", "50")
    assert [e["event"] for e in events].count("issued") == 1
    assert sum(e["event"] == "refused" for e in events) == statuses.count(403)
    assert code not in "\n".join(map(str, events))
    out = estkit("user", "list", "--dir", str(d), env=env).stdout.decode()
    assert re.search(r"^line-7\t\S+\tone-time,used,any-name$", out, re.M), out
    assert re.search(r"^late\t\S+\tone-time,expired,any-name$", out, re.M), out
    estkit("user", "set", "line-7", "--dir", str(d), "--reset-used", env=env)
    assert "one-time,used" not in estkit("user", "list", "--dir", str(d), env=env).stdout.decode()


# -- manual approval (RFC 7030 §4.2.3) and Digest share one server ------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = init_server_dir(tmp_path_factory.mktemp("flows") / "data")
    estkit("user", "add", "bob", "--dir", str(d), "--password-stdin", "--cn", "{name}", input="pw-bob\n")
    estkit("user", "add", "dig", "--dir", str(d), "--password-stdin", "--digest", input=DIGEST_PW + "\n")

    def configure(doc: dict[str, Any]) -> None:
        base = doc["labels"]["default"]
        doc["labels"]["held"] = {**base, "manual_approval": True, "pending_retry_after": 7}
        doc["labels"]["dig256"] = {**base, "digest_auth": ["SHA-256"]}
        doc["labels"]["digmd5"] = {**base, "digest_auth": ["MD5"]}
    with server(d, users={"alice": "pw-alice"}, configure=configure, workers=2) as s:
        yield s


def _request_id(body: bytes) -> int:
    m = re.search(rb"request (\d+) is waiting for approval", body)
    assert m, body
    return int(m.group(1))


def test_approval_then_retry_gets_the_certificate(srv: ServerProcess) -> None:
    csr = build_csr(generate_key("ec:P-256"), cn="held-ok")
    r, _ = enroll(srv, csr, user=ALICE, label="held")
    assert r.status == 202 and r.header("Retry-After") == "7", r.body
    rid = _request_id(r.body)
    check_audit(srv, "user:alice", csr, "held", event="pending", detail=f"request {rid}")
    r2, _ = enroll(srv, csr, user=ALICE, label="held")  # the same CSR finds the same request
    assert r2.status == 202 and _request_id(r2.body) == rid
    listed = estkit("requests", "list", "--dir", str(srv.dir)).stdout.decode()
    assert sum(line.split("\t")[0] == str(rid) for line in listed.splitlines()) == 1
    assert sum(fingerprint(csr)[:16] in line for line in listed.splitlines()) == 1
    estkit("requests", "approve", str(rid), "--dir", str(srv.dir), "--operator", "carol")
    op = audit(srv, "--identity", "operator:carol", "--limit", "1")[0]
    assert op["event"] == "approved" and op["csr_fingerprint"] == fingerprint(csr) and op["label"] == "held"
    r3, cert = enroll(srv, csr, user=ALICE, label="held")
    assert r3.status == 200 and cert is not None, r3.body
    check_audit(srv, "user:alice", csr, "held", event="issued", cert=cert)
    r4, again = enroll(srv, csr, user=ALICE, label="held")  # a lost answer is sent again, not reissued
    assert r4.status == 200 and again == cert
    # Revocation is a decision too: the certificate's trail is issued, then revoked.
    serial = format(cert.serial_number, "x")
    estkit("revoke", serial, "--reason", "keyCompromise", "--dir", str(srv.dir))
    trail = audit(srv, "--serial", serial)
    assert [e["event"] for e in trail] == ["revoked", "issued"]
    assert trail[0]["label"] == "held" and "keyCompromise" in trail[0]["detail"] and trail[0]["identity"] == "cli"


def test_rejection_then_retry_gets_403_with_the_reason(srv: ServerProcess) -> None:
    csr = build_csr(generate_key("ec:P-256"), cn="held-no")
    r, _ = enroll(srv, csr, user=ALICE, label="held")
    rid = _request_id(r.body)
    estkit("requests", "reject", str(rid), "--dir", str(srv.dir), "--reason", "not one of ours", "--operator", "carol")
    op = audit(srv, "--identity", "operator:carol", "--limit", "1")[0]
    assert op["event"] == "rejected" and "not one of ours" in op["detail"]
    r2, _ = enroll(srv, csr, user=ALICE, label="held")
    assert r2.status == 403 and b"not one of ours" in r2.body
    check_audit(srv, "user:alice", csr, "held", event="refused", detail="not one of ours")


def test_authorization_runs_before_a_request_is_held(srv: ServerProcess) -> None:
    before = estkit("requests", "list", "--dir", str(srv.dir), "--status", "all").stdout
    csr = build_csr(generate_key("ec:P-256"), cn="mallory")
    r, _ = enroll(srv, csr, user=("bob", "pw-bob"), label="held")
    assert r.status == 403 and b"rule 'cn'" in r.body
    assert estkit("requests", "list", "--dir", str(srv.dir), "--status", "all").stdout == before
    check_audit(srv, "user:bob", csr, "held", event="refused", detail="rule 'cn'")
    ok = build_csr(generate_key("ec:P-256"), cn="bob")
    r, _ = enroll(srv, ok, user=("bob", "pw-bob"), label="held")
    assert r.status == 202


# -- HTTP Digest (RFC 7616) with curl ----------------------------------------------------------------


def _curl_digest(srv: ServerProcess, tmp: Path, label: str, user: str, password: str, cn: str) -> tuple[str, str]:
    run(["sh", "-c", f"cd {tmp} && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                     f"-keyout {cn}.key -subj /CN={cn} -outform DER 2>/dev/null | openssl base64 -A > {cn}.b64"])
    p = run(["curl", "-sv", "--cacert", str(srv.ca_pem), "--digest", "--user", f"{user}:{password}",
             "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{tmp / (cn + '.b64')}",
             "-o", str(tmp / f"{cn}.out"), "-w", "%{http_code}", srv.url("simpleenroll", label)], check=False)
    return p.stdout.decode(), p.stderr.decode()


@pytest.mark.parametrize("label,alg", [pytest.param("dig256", "SHA-256", id="ok/sha256"),
                                       pytest.param("digmd5", "MD5", id="ok/md5")])
def test_curl_digest_enrolls(srv: ServerProcess, tmp_path: Path, label: str, alg: str) -> None:
    require_tool("curl", "openssl")
    code, trace = _curl_digest(srv, tmp_path, label, "dig", DIGEST_PW, f"digest-{alg}")
    assert code == "200", trace
    assert re.search(rf"> Authorization: Digest .*algorithm={alg}", trace), trace
    assert f'WWW-Authenticate: Digest realm="estkit", qop="auth", algorithm="{alg}"' in trace
    p7 = run(["sh", "-c", f"openssl base64 -d -A < {tmp_path}/digest-{alg}.out | openssl pkcs7 -inform DER "
                          f"-print_certs"]).stdout.decode()
    assert f"subject=CN = digest-{alg}" in p7
    assert last_event(srv, "user:dig")["label"] == label


def last_event(srv: ServerProcess, ident: str, event: str | None = None) -> dict[str, Any]:
    """The identity's newest audit event (of one kind): failed logins are written
    per minute (auth-failed), so a decision's row is looked up by its kind."""
    return audit(srv, "--identity", ident, "--limit", "1", *(("--event", event) if event else ()))[0]


@pytest.mark.parametrize("label,user,password", [
    pytest.param("dig256", "dig", "wrong", id="fail/wrong-password"),
    pytest.param("dig256", "alice", "pw-alice", id="fail/user-without-digest"),
    pytest.param(None, "dig", DIGEST_PW, id="fail/label-without-digest"),
])
def test_curl_digest_refused(srv: ServerProcess, tmp_path: Path, label: str | None, user: str,
                             password: str) -> None:
    require_tool("curl", "openssl")
    code, trace = _curl_digest(srv, tmp_path, label or "", user, password, "digest-refused")
    assert code == "401", trace


def test_stale_nonce_gets_a_new_challenge_with_stale_true(srv: ServerProcess) -> None:
    """RFC 7616 §3.3: a genuine but expired nonce is answered with stale=true."""
    from estkit.server.digest import DigestAuth
    old = DigestAuth(None, "estkit", (srv.dir / "digest-secret").read_bytes(),  # type: ignore[arg-type]
                     clock=lambda: time.time() - 3600)._nonce()
    uri = "/.well-known/est/dig256/simpleenroll"
    ha1 = hashlib.sha256(f"dig:estkit:{DIGEST_PW}".encode()).hexdigest()
    ha2 = hashlib.sha256(f"POST:{uri}".encode()).hexdigest()
    resp = hashlib.sha256(f"{ha1}:{old}:00000001:abc:auth:{ha2}".encode()).hexdigest()
    header = (f'Digest username="dig", realm="estkit", nonce="{old}", uri="{uri}", algorithm=SHA-256, '
              f'qop=auth, nc=00000001, cnonce="abc", response="{resp}"')
    import base64
    body = base64.b64encode(build_csr(generate_key("ec:P-256"), cn="stale")) + b"\n"
    r = https(srv, "POST", "simpleenroll", body, label="dig256", headers={**PKCS10, "Authorization": header})
    assert r.status == 401 and b"nonce expired" in r.body
    challenges = r.headers.get_all("WWW-Authenticate")
    assert any("stale=true" in ch and "algorithm=\"SHA-256\"" in ch for ch in challenges), challenges
    # Change one character in the middle (the last ones may carry only padding bits).
    mid = len(old) // 2
    bad = old[:mid] + ("B" if old[mid] == "A" else "A") + old[mid + 1:]
    assert bad != old
    tampered = header.replace(f'nonce="{old}"', f'nonce="{bad}"')
    r = https(srv, "POST", "simpleenroll", body, label="dig256", headers={**PKCS10, "Authorization": tampered})
    assert r.status == 401 and b"unknown Digest nonce" in r.body


def test_audit_never_holds_passwords_codes_or_keys(srv: ServerProcess) -> None:
    """Makes every row it checks (so it holds when run alone): issued with Basic,
    with Digest and with a one-time code, refused, approved; then the raw audit
    table holds none of the passwords, the code, the Digest HA1 values or a key."""
    from estkit import client
    db = sqlite3.connect(srv.dir / "estkit.db")
    first = db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]
    code = estkit("user", "add", "audit-otc", "--dir", str(srv.dir), "--one-time", "--expires", "1d"
                  ).stdout.decode().strip()
    assert len(code) >= 20
    assert enroll(srv, build_csr(generate_key("ec:P-256"), cn="audit-basic"), user=ALICE)[0].status == 200
    assert enroll(srv, build_csr(generate_key("ec:P-256"), cn="audit-otc"), user=("audit-otc", code))[0].status == 200
    assert enroll(srv, build_csr(generate_key("ec:P-256"), cn="mallory"), user=("bob", "pw-bob"))[0].status == 403
    client.EstClient(f"https://localhost:{srv.port}", trust=str(srv.ca_pem), label="dig256",
                     auth=client.DigestAuth("dig", DIGEST_PW)).enroll(cn="audit-digest")
    r, _ = enroll(srv, build_csr(generate_key("ec:P-256"), cn="audit-held"), user=ALICE, label="held")
    estkit("requests", "approve", str(_request_id(r.body)), "--dir", str(srv.dir), "--operator", "audit-op")
    new = db.execute("SELECT event, identity FROM audit WHERE id > ?", (first,)).fetchall()
    rows = "\n".join(map(str, db.execute("SELECT * FROM audit").fetchall()))  # the whole raw table
    # Failed logins of other tests on this server (aggregated per minute, so written at any moment)
    # say "wrong user name or password": the reason, not a secret; the needle "password" below
    # looks for a password field or value.
    rows = rows.replace("wrong user name or password", "wrong user name or <p>")
    db.close()
    for want in [("issued", "user:alice"), ("issued", "user:audit-otc"), ("issued", "user:dig"),
                 ("refused", "user:bob"), ("pending", "user:alice"), ("approved", "operator:audit-op")]:
        assert want in new, (want, new)
    ha1 = [hashlib.new(h, f"dig:estkit:{DIGEST_PW}".encode()).hexdigest() for h in ("sha256", "md5")]
    for secret in ("pw-alice", "pw-bob", DIGEST_PW, code, *ha1, "PRIVATE KEY", "password"):
        assert secret not in rows, secret
    out = estkit("audit", "--dir", str(srv.dir), "--event", "approved").stdout.decode()
    assert "operator:audit-op" in out and all(line.split("\t")[1] == "approved" for line in out.splitlines())


@pytest.mark.parametrize("header,reason", [
    pytest.param('Digest username="dig"', "lack realm", id="fail/missing-fields"),
    pytest.param('Digest ,,=,"', "malformed Digest", id="fail/malformed"),
    pytest.param('Digest username="dig", realm="estkit", nonce="x", uri="/.well-known/est/dig256/simpleenroll", '
                 'response="00", qop=auth, nc=1, cnonce="c", algorithm=SHA-512-256', "not offered",
                 id="fail/algorithm-not-offered"),
    pytest.param('Digest username="dig", realm="estkit", nonce="x", uri="/elsewhere", response="00", qop=auth, '
                 'nc=1, cnonce="c", algorithm=SHA-256', "uri does not match", id="fail/uri-mismatch"),
    pytest.param('Digest username="dig", realm="other", nonce="x", uri="/.well-known/est/dig256/simpleenroll", '
                 'response="00", qop=auth, nc=1, cnonce="c", algorithm=SHA-256', "another realm", id="fail/realm"),
])
def test_bad_digest_credentials_are_a_clean_401(srv: ServerProcess, header: str, reason: str) -> None:
    import base64
    body = base64.b64encode(build_csr(generate_key("ec:P-256"), cn="bad")) + b"\n"
    r = https(srv, "POST", "simpleenroll", body, label="dig256", headers={**PKCS10, "Authorization": header})
    assert r.status == 401 and reason in r.body.decode() and r.body.count(b"\n") == 1, r.body
    assert any(ch.startswith("Digest ") for ch in r.headers.get_all("WWW-Authenticate"))


@pytest.mark.parametrize("label", [pytest.param("dig256", id="ok/bc-sha256"), pytest.param("digmd5", id="ok/bc-md5")])
def test_bouncy_castle_digest_enrolls(srv: ServerProcess, tmp_path: Path, label: str, classpath: str) -> None:
    """Bouncy Castle 1.72's EST client answers the first WWW-Authenticate, and
    only parses quoted values: Digest comes first and algorithm is quoted."""
    from test_e2e_bouncycastle import estbc
    cert = tmp_path / "bc.pem"
    estbc(classpath, srv, "enroll", "--user", "dig", "--password", DIGEST_PW, "--cn", f"bc-{label}.example",
          "--label", label, "--key-out", str(tmp_path / "bc.key"), "--out", str(cert))
    text = run(["openssl", "x509", "-in", str(cert), "-noout", "-subject"]).stdout.decode()
    assert f"CN = bc-{label}.example" in text
    e = last_event(srv, "user:dig", "issued")
    assert e["event"] == "issued" and e["label"] == label


@pytest.mark.parametrize("label", [pytest.param("dig256", id="ok/client-sha256"),
                                   pytest.param("digmd5", id="ok/client-md5")])
def test_estkit_client_digest_enrolls(srv: ServerProcess, label: str) -> None:
    """estkit's own client (estkit.client, DigestAuth) against Digest labels."""
    from estkit import client  # part of estkit: never skipped
    est = client.EstClient(f"https://localhost:{srv.port}", trust=str(srv.ca_pem), label=label,
                           auth=client.DigestAuth("dig", DIGEST_PW))
    _key, cert = est.enroll(cn=f"estclient-{label}")
    assert cert.subject.rfc4514_string() == f"CN=estclient-{label}"
    e = last_event(srv, "user:dig", "issued")
    assert e["event"] == "issued" and e["label"] == label and e["serial"] == format(cert.serial_number, "x")
    wrong = client.EstClient(f"https://localhost:{srv.port}", trust=str(srv.ca_pem), label=label,
                             auth=client.DigestAuth("dig", "wrong"))
    with pytest.raises(client.EstError) as exc:
        wrong.enroll(cn="nope")
    assert exc.value.status == 401
