"""The authorization model end to end (docs/policy.md "Who may ask for what").

A server from a fresh `estkit init`, with a label issuing RA certificates
(`extended_key_usage = ["cmcRA", "clientAuth"]`), and every identity kind: a
Basic user with a policy and one without, certificates obtained by each, an RA
certificate with a `[policies]` grant and one without, a bootstrap IDevID, the
certificates of a disabled, a removed and an expired user, and a certificate
issued before the upgrade (no enrollee recorded).  Each is tried for its own
names, another name, another label, the RA label and renewal, through every
operation that issues.  A certificate never carries more than its enrollee was
allowed, and RA authority is granted, never obtained.
"""

from __future__ import annotations

import base64
import http.client
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from policy_support import MFG_CA, enroll, last_audit, manufacturer
from support import ServerProcess, estkit, init_server_dir, server

from estkit.protocol import constants as c
from estkit.protocol.cmc import TaggedRequest
from estkit.protocol.cmc_client import build_cmc_request, parse_cmc_response
from estkit.protocol.cmc_crmf import build_crmf
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

# RFC 5272 §6.1.4 CMCFailInfo values, pinned here (not read from the code under test).
BAD_IDENTITY, TRY_LATER = 7, 12

USERS = {"bob": "pw-bob", "alice": "pw-alice", "raop": "pw-raop", "carol": "pw-carol", "dave": "pw-dave",
         "erin": "pw-erin"}
POLICIES = {
    # Only this RA certificate is granted RA powers; ra-rogue (same label, same EKU) is not.
    "ras": {"kinds": ["ra"], "subjects": ["CN=ra-granted"], "labels": ["default", "ra"], "cn": ["dev-*"],
            "dns": ["*.devices.example.com"]},
    "idevid": {"kinds": ["bootstrap"], "issuers": [MFG_CA], "labels": ["default"], "cn": ["{serialNumber}"],
               "dns": ["{serialNumber}.devices.example.com"]},
}

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`


@dataclass
class Env:
    srv: ServerProcess
    tmp: Path
    tls: dict[str, tuple[Path, Path]]
    names: dict[str, tuple[str, list[str]]]   # what "own" asks for: an identity's own (CN, DNS names)
    issued: dict[str, tuple[str, list[str]]]  # a certificate's own (CN, DNS names), for renewal
    certs: dict[str, x509.Certificate]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("authz")
    mfg = manufacturer(tmp)
    d = init_server_dir(tmp / "data")
    doc = ServerProcess(d).config()
    doc["server"]["bootstrap_trust"] = [str(mfg["ca"])]
    base = doc["labels"]["default"]
    base["serverkeygen"] = True
    doc["labels"]["devices"] = dict(base)
    doc["labels"]["ra"] = {**base, "extended_key_usage": ["cmcRA", "clientAuth"]}
    doc["labels"]["held"] = {**base, "manual_approval": True}
    doc["policies"] = POLICIES
    ServerProcess(d).set_config(doc)
    add = ["user", "add", "--dir", str(d), "--password-stdin"]
    estkit(*add[:2], "bob", *add[2:], "--label", "default", "--cn", "{name}", "--dns", "*.bob.example.com",
           input="pw-bob\n")
    estkit(*add[:2], "raop", *add[2:], "--label", "default", "--label", "ra", input="pw-raop\n")
    for name in ("alice", "carol", "dave", "erin"):
        estkit(*add[:2], name, *add[2:], input=f"pw-{name}\n")

    with server(d) as srv:
        tls: dict[str, tuple[Path, Path]] = {"bootstrap": (mfg["cert"], mfg["key"])}
        certs: dict[str, x509.Certificate] = {}
        names = {"bob": ("bob", ["www.bob.example.com"]), "alice": ("alice-own", ["alice.example.com"]),
                 "bootstrap": ("SN123", ["SN123.devices.example.com"]),
                 "ra-granted": ("dev-1", ["dev-1.devices.example.com"]),
                 "ra-rogue": ("dev-1", ["dev-1.devices.example.com"]), "raop": ("ra-new", [])}
        issued: dict[str, tuple[str, list[str]]] = {}
        for ident, user, cn, dns, label in (
                ("cert-bob", "bob", "bob", ["www.bob.example.com"], None),
                ("cert-alice", "alice", "alice-dev", ["alice-dev.example.com"], None),
                ("ra-granted", "raop", "ra-granted", [], "ra"),
                ("ra-rogue", "raop", "ra-rogue", [], "ra"),
                ("cert-carol", "carol", "carol", [], None),
                ("cert-dave", "dave", "dave", [], None),
                ("cert-erin", "erin", "erin", [], None),
                ("cert-legacy", "alice", "legacy", ["legacy.example.com"], None)):
            key = generate_key("ec:P-256")
            r, cert = enroll(srv, build_csr(key, cn=cn, dns=dns), user=(user, USERS[user]), label=label)
            assert r.status == 200 and cert is not None, (ident, r.body)
            cp = tmp / f"{ident}.pem"
            cp.write_bytes(cert.public_bytes(c_encoding()))
            from policy_support import write_key
            tls[ident] = (cp, write_key(tmp / f"{ident}.key", key))
            certs[ident] = cert
            names.setdefault(ident, (cn, dns))
            issued[ident] = (cn, dns)
        # The enrollees of three certificates lose their rights after the certificates were issued.
        estkit("user", "set", "carol", "--disable", "--dir", str(d))
        estkit("user", "remove", "dave", "--dir", str(d))
        estkit("user", "set", "erin", "--expires", "2020-01-01T00:00:00+00:00", "--dir", str(d))
        # A certificate issued before the upgrade has no enrollee recorded.
        with sqlite3.connect(d / "estkit.db") as db:
            db.execute("UPDATE certificates SET enrollee = NULL WHERE serial = ?",
                       (format(certs["cert-legacy"].serial_number, "x"),))
        yield Env(srv, tmp, tls, names, issued, certs)


def c_encoding() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding
    return Encoding.PEM


def _auth(env: Env, ident: str) -> dict[str, Any]:
    if ident in USERS:
        return {"user": (ident, USERS[ident])}
    return {"tls": env.tls[ident]}


OTHER = ("admin", ["evil.example.com"])

# (identity, what it asks for, label, status, the rule a refusal names)
#   own: the identity's own names (a certificate's subject and SANs; an RA's: a device within its grant)
#   other: CN=admin with DNS:evil.example.com
#   renew: simplereenroll of the certificate itself (subject and SANs unchanged, RFC 7030 §4.2.2)
MATRIX: list[tuple[str, str, str, str | None, int, str | None]] = [
    ("ok/user-with-policy/own", "bob", "own", None, 200, None),
    ("fail/user-with-policy/other", "bob", "other", None, 403, "cn"),
    ("fail/user-with-policy/other-label", "bob", "own", "devices", 403, "labels"),
    ("fail/user-with-policy/ra-label", "bob", "own", "ra", 403, "labels"),
    ("ok/user-without-policy/own", "alice", "own", None, 200, None),
    ("ok/user-without-policy/other", "alice", "other", None, 200, None),
    ("ok/user-without-policy/other-label", "alice", "own", "devices", 200, None),
    ("fail/user-without-policy/ra-label", "alice", "own", "ra", 403, "ra-label"),
    ("ok/user-granted-ra-label/ra-label", "raop", "own", "ra", 200, None),
    ("ok/cert-of-user-with-policy/own", "cert-bob", "own", None, 200, None),
    ("fail/cert-of-user-with-policy/other", "cert-bob", "other", None, 403, "own-names"),
    ("fail/cert-of-user-with-policy/other-label", "cert-bob", "own", "devices", 403, "own-label"),
    ("fail/cert-of-user-with-policy/ra-label", "cert-bob", "own", "ra", 403, "ra-label"),
    ("ok/cert-of-user-with-policy/renew", "cert-bob", "renew", None, 200, None),
    ("fail/cert-of-user-with-policy/renew-to-ra-label", "cert-bob", "renew", "ra", 403, "ra-label"),
    ("ok/cert-of-user-without-policy/own", "cert-alice", "own", None, 200, None),
    ("fail/cert-of-user-without-policy/other", "cert-alice", "other", None, 403, "own-names"),
    ("fail/cert-of-user-without-policy/other-label", "cert-alice", "own", "devices", 403, "own-label"),
    ("fail/cert-of-user-without-policy/ra-label", "cert-alice", "own", "ra", 403, "ra-label"),
    ("ok/cert-of-user-without-policy/renew", "cert-alice", "renew", None, 200, None),
    ("fail/cert-of-user-without-policy/renew-to-other-label", "cert-alice", "renew", "devices", 403, "own-label"),
    ("fail/cert-of-user-without-policy/renew-to-ra-label", "cert-alice", "renew", "ra", 403, "ra-label"),
    ("ok/ra-granted/own", "ra-granted", "own", None, 200, None),
    ("fail/ra-granted/other", "ra-granted", "other", None, 403, "cn"),
    ("fail/ra-granted/other-label", "ra-granted", "own", "devices", 403, "labels"),
    ("ok/ra-granted/ra-label", "ra-granted", "own", "ra", 200, None),
    ("ok/ra-granted/renew", "ra-granted", "renew", "ra", 200, None),
    ("fail/ra-without-grant/own", "ra-rogue", "own", None, 403, "own-names"),
    ("fail/ra-without-grant/other", "ra-rogue", "other", None, 403, "own-names"),
    ("fail/ra-without-grant/other-label", "ra-rogue", "own", "devices", 403, "own-names"),
    ("fail/ra-without-grant/ra-label", "ra-rogue", "own", "ra", 403, "ra-label"),
    ("fail/ra-without-grant/renew", "ra-rogue", "renew", "ra", 403, "ra-label"),
    ("ok/bootstrap/own", "bootstrap", "own", None, 200, None),
    ("fail/bootstrap/other", "bootstrap", "other", None, 403, "cn"),
    ("fail/bootstrap/other-label", "bootstrap", "own", "devices", 403, "labels"),
    ("fail/bootstrap/ra-label", "bootstrap", "own", "ra", 403, "labels"),
    ("fail/cert-of-disabled-user/own", "cert-carol", "own", None, 403, "enrollee"),
    ("fail/cert-of-disabled-user/renew", "cert-carol", "renew", None, 403, "enrollee"),
    ("fail/cert-of-removed-user/own", "cert-dave", "own", None, 403, "enrollee"),
    ("fail/cert-of-expired-user/renew", "cert-erin", "renew", None, 403, "enrollee"),
    ("ok/cert-before-upgrade/own", "cert-legacy", "own", None, 200, None),
    ("fail/cert-before-upgrade/other", "cert-legacy", "other", None, 403, "own-names"),
    ("fail/cert-before-upgrade/other-label", "cert-legacy", "own", "devices", 403, "own-label"),
    ("fail/cert-before-upgrade/ra-label", "cert-legacy", "own", "ra", 403, "ra-label"),
    ("ok/cert-before-upgrade/renew", "cert-legacy", "renew", None, 200, None),
]


@pytest.mark.parametrize("ident,ask,label,status,rule", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_matrix(env: Env, ident: str, ask: str, label: str | None, status: int, rule: str | None) -> None:
    cn, dns = OTHER if ask == "other" else env.issued[ident] if ask == "renew" else env.names[ident]
    csr = build_csr(generate_key("ec:P-256"), cn=cn, dns=dns)
    op = "simplereenroll" if ask == "renew" else "simpleenroll"
    r, cert = enroll(env.srv, csr, label=label, op=op, **_auth(env, ident))
    if status == 200:
        assert r.status == 200 and cert is not None, r.body
        assert cert.subject.rfc4514_string() == f"CN={cn}"
        return
    assert r.status == status, r.body
    assert f"rule '{rule}'" in r.body.decode(), r.body
    who = f"user:{ident}" if ident in USERS else None
    if who is not None:
        e = last_audit(env.srv, who)
        assert e["event"] == "refused" and f"rule '{rule}'" in e["detail"], e


# The same refusals through the other operations that issue.
def _cmc(env: Env, label: str | None, body: bytes, tls: tuple[Path, Path] | None) -> tuple[int, Any]:
    ctx = env.srv.ssl_context(*tls) if tls else env.srv.ssl_context()
    conn = http.client.HTTPSConnection("localhost", env.srv.port, context=ctx, timeout=30)
    path = f"/.well-known/est/{label}/fullcmc" if label else "/.well-known/est/fullcmc"
    conn.request("POST", path, body=base64.b64encode(body) + b"\n", headers={"Content-Type": c.CT_CMC_REQUEST})
    resp = conn.getresponse()
    status, raw = resp.status, resp.read()
    conn.close()
    return status, parse_cmc_response(base64.b64decode(raw))


def _key_of(env: Env, ident: str) -> Any:
    return load_pem_private_key(env.tls[ident][1].read_bytes(), None)


@pytest.mark.parametrize("ident,form,signed_by,status,fail,rule", [
    pytest.param("cert-alice", "tcr", "self", 403, BAD_IDENTITY, "own-names", id="fail/cert-fullcmc-pkcs10-other"),
    pytest.param("cert-alice", "crm", "self", 403, BAD_IDENTITY, "own-names", id="fail/cert-fullcmc-crmf-other"),
    pytest.param("ra-granted", "tcr", "ra", 200, None, None, id="ok/ra-granted-fullcmc-for-device"),
    pytest.param("ra-rogue", "tcr", "ra", 403, BAD_IDENTITY, "own-names", id="fail/ra-without-grant-fullcmc"),
    pytest.param("ra-rogue", "crm", "ra", 403, BAD_IDENTITY, "own-names", id="fail/ra-without-grant-fullcmc-crmf"),
])
def test_fullcmc(env: Env, ident: str, form: str, signed_by: str, status: int, fail: int | None,
                 rule: str | None) -> None:
    """fullcmc (RFC 7030 §4.3) is authorized like simpleenroll: PKCS#10 and CRMF, RA-signed or not."""
    device = generate_key("ec:P-256")
    cn, dns = ("dev-9", ["dev-9.devices.example.com"]) if signed_by == "ra" else OTHER
    if form == "tcr":
        req = TaggedRequest(1, "tcr", build_csr(device, cn=cn, dns=dns))
    else:
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
        req = TaggedRequest(1, "crm", build_crmf(device, cert_req_id=1, subject=name,
                                                  dns=dns))
    if signed_by == "ra":  # the RA signs the PKIData (RFC 5272 §3.2.1.3.1)
        body = build_cmc_request(_key_of(env, ident), requests=[req], signer_cert=env.certs[ident]).der
        tls = None
    else:  # signed by the key being certified, authenticated by the TLS client certificate
        body = build_cmc_request(device, requests=[req]).der
        tls = env.tls[ident]
    got, reply = _cmc(env, None, body, tls)
    assert got == status, reply.statuses
    if fail is None:
        assert any(x.subject.rfc4514_string() == f"CN={cn}" for x in reply.certificates)
    else:
        st = reply.statuses[0]
        assert st.fail_info == fail and f"rule '{rule}'" in (st.status_string or ""), st


def test_serverkeygen_is_bound_like_simpleenroll(env: Env) -> None:
    csr = build_csr(generate_key("ec:P-256"), cn=OTHER[0], dns=OTHER[1])
    r, _ = enroll(env.srv, csr, op="serverkeygen", tls=env.tls["cert-alice"])
    assert r.status == 403 and b"rule 'own-names'" in r.body, r.body
    csr = build_csr(generate_key("ec:P-256"), cn="alice-dev", dns=["alice-dev.example.com"])
    r, _ = enroll(env.srv, csr, op="serverkeygen", tls=env.tls["cert-alice"])
    assert r.status == 200, r.body


def test_manual_approval_refuses_outside_the_policy_at_once(env: Env) -> None:
    """A request outside the identity's policy is refused, never held (RFC 7030 §4.2.3 comes after)."""
    csr = build_csr(generate_key("ec:P-256"), cn="bob", dns=["www.bob.example.com"])
    r, _ = enroll(env.srv, csr, label="held", user=("bob", USERS["bob"]))
    assert r.status == 403 and b"rule 'labels'" in r.body, r.body
    own = build_csr(generate_key("ec:P-256"), cn="alice-dev", dns=["alice-dev.example.com"])
    r, _ = enroll(env.srv, own, label="held", tls=env.tls["cert-alice"])
    assert r.status == 403 and b"rule 'own-label'" in r.body, r.body
    pending = estkit("requests", "list", "--dir", str(env.srv.dir)).stdout.decode()
    assert "bob" not in pending and "alice" not in pending, pending


def test_crmf_to_a_manual_approval_label_is_held(env: Env) -> None:
    """A CRMF request to a label with manual approval gets a CMC tryLater with 503, not a bare 500."""
    device = generate_key("ec:P-256")
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "held-crmf")])
    req = TaggedRequest(1, "crm", build_crmf(device, cert_req_id=1, subject=name))
    body = build_cmc_request(device, requests=[req]).der
    ctx_user = base64.b64encode(b"alice:pw-alice").decode()
    conn = http.client.HTTPSConnection("localhost", env.srv.port, context=env.srv.ssl_context(), timeout=30)
    conn.request("POST", "/.well-known/est/held/fullcmc", body=base64.b64encode(body) + b"\n",
                 headers={"Content-Type": c.CT_CMC_REQUEST, "Authorization": f"Basic {ctx_user}"})
    resp = conn.getresponse()
    status, raw, retry = resp.status, resp.read(), resp.getheader("Retry-After")
    conn.close()
    assert status == 503 and retry is not None, raw
    st = parse_cmc_response(base64.b64decode(raw)).statuses[0]
    assert st.fail_info == TRY_LATER, st


def test_disabled_user_is_told_its_certificates_stop_enrolling(env: Env) -> None:
    p = estkit("user", "set", "carol", "--disable", "--dir", str(env.srv.dir))
    out = (p.stdout + p.stderr).decode()
    assert "certificates" in out and "revoke" in out, out


def test_user_without_rules_is_warned_and_listed(env: Env) -> None:
    p = estkit("user", "add", "frank", "--dir", str(env.srv.dir), "--password-stdin", input="pw-frank\n")
    assert b"any name" in p.stdout + p.stderr, p
    listed = estkit("user", "list", "--dir", str(env.srv.dir)).stdout.decode()
    line = next(x for x in listed.splitlines() if x.startswith("frank"))
    assert "any-name" in line, listed
    bob = next(x for x in listed.splitlines() if x.startswith("bob"))
    assert "any-name" not in bob, listed


def test_serve_warns_about_ra_certificates_without_a_grant(tmp_path: Path) -> None:
    d = init_server_dir(tmp_path / "d")

    def configure(doc: dict[str, Any]) -> None:
        doc["labels"]["ra"] = {**doc["labels"]["default"], "extended_key_usage": ["cmcRA", "clientAuth"]}
    with server(d, configure=configure) as srv:
        pass
    assert "RA" in srv.log() and "no [policies" in srv.log(), srv.log()
