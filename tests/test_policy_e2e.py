"""Authorization end to end on a real server (2 workers): a policy matrix of each
identity kind (Basic user, client certificate, RA, bootstrap IDevID) allowed or
refused by name, label, validity and rate, RA enrollment for others (simpleenroll
and fullcmc), the once-only bootstrap rule, and the audit trail after each."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from policy_support import MFG_CA, audit, check_audit, enroll, issue_cert, last_audit, manufacturer
from support import ServerProcess, estkit, init_server_dir, server

from estkit.protocol import constants as c
from estkit.protocol.cmc import FAIL_INFO, Control, TaggedRequest, ctl_revoke_request
from estkit.protocol.cmc_client import build_cmc_request, parse_cmc_response
from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

ALICE, BOB, RL = ("alice", "pw-alice"), ("bob", "pw-bob"), ("rl", "pw-rl")
POLICIES = {
    # alice may use every label, the RA label included (RA authority is granted, never obtained)
    "alice": {"users": ["alice"], "labels": ["default", "devices", "ra", "linked"]},
    "idevid": {"kinds": ["bootstrap"], "issuers": [MFG_CA], "labels": ["default"], "cn": ["{serialNumber}"],
               "dns": ["{serialNumber}.devices.example.com"], "once": True},
    "ras": {"kinds": ["ra"], "labels": ["default", "linked"], "cn": ["dev-*"], "dns": ["*.devices.example.com"],
            "rate": "4/hour"},
    "gateways": {"kinds": ["cert"], "subjects": ["CN=gw-*"], "labels": ["default", "linked"], "cn": ["{name}"],
                 "max_validity_days": 30, "rate": "3/hour"},
}


@dataclass
class Env:
    srv: ServerProcess
    tmp: Path
    mfg: dict[str, Path]
    certs: dict[str, tuple[Path, Path, x509.Certificate]]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("policy")
    mfg = manufacturer(tmp)
    d = init_server_dir(tmp / "data")
    estkit("user", "add", "bob", "--dir", str(d), "--password-stdin", "--label", "default",
           "--cn", "{name}", "--dns", "*.devices.example.com", "--ip", "10.0.0.0/8", "--max-validity-days", "7",
           input="pw-bob\n")
    estkit("user", "add", "rl", "--dir", str(d), "--password-stdin", "--rate", "2/hour", input="pw-rl\n")

    def configure(doc: dict[str, Any]) -> None:
        doc["server"]["bootstrap_trust"] = [str(mfg["ca"])]
        base = doc["labels"]["default"]
        base["serverkeygen"] = True
        doc["labels"]["devices"] = dict(base)
        doc["labels"]["ra"] = {**base, "extended_key_usage": ["clientAuth", "cmcRA"]}
        doc["labels"]["linked"] = {**base, "require_linking": True, "ra_waives_linking": True}
        doc["policies"] = POLICIES
    with server(d, users={"alice": "pw-alice"}, configure=configure, workers=2) as srv:
        certs = {cn: issue_cert(srv, tmp, cn, user=ALICE, label=label)
                 for cn, label in (("gw-1", None), ("gw-rate", None), ("ra-1", "ra"), ("ra-rate", "ra"))}
        yield Env(srv, tmp, mfg, certs)


def _who(env: Env, kind: str) -> tuple[dict[str, Any], str]:
    """How each identity kind authenticates, and its name in the audit trail."""
    if kind == "user":
        return {"user": BOB}, "user:bob"
    if kind == "alice":
        return {"user": ALICE}, "user:alice"
    if kind == "bootstrap":
        return {"tls": (env.mfg["cert"], env.mfg["key"])}, "bootstrap:2.5.4.5=SN123,CN=idevid"
    cp, kp, cert = env.certs["gw-1" if kind == "cert" else "ra-1"]
    return {"tls": (cp, kp)}, f"cert:{cert.subject.rfc4514_string()}"


MATRIX = [
    # id, identity kind, CSR (cn, dns, ips), label, refused rule or None, validity cap in days
    ("ok/user-unrestricted", "alice", ("anything", ("bank.example",), ()), None, None, 365),
    ("ok/user-within-policy", "user", ("bob", ("a.devices.example.com",), ("10.1.2.3",)), None, None, 7),
    ("fail/user-name", "user", ("mallory", (), ()), None, "cn", 0),
    ("fail/user-dns", "user", ("bob", ("evil.example.com",), ()), None, "dns", 0),
    ("fail/user-ip", "user", ("bob", (), ("192.168.1.1",)), None, "ip", 0),
    ("fail/user-label", "user", ("bob", (), ()), "devices", "labels", 0),
    ("ok/cert-own-name", "cert", ("gw-1", (), ()), None, None, 30),
    ("fail/cert-name", "cert", ("gw-2", (), ()), None, "cn", 0),
    ("fail/cert-label", "cert", ("gw-1", (), ()), "devices", "labels", 0),
    ("ok/ra-for-another-name", "ra", ("dev-7", ("dev-7.devices.example.com",), ()), None, None, 365),
    ("fail/ra-name", "ra", ("printer", (), ()), None, "cn", 0),
    ("fail/ra-dns", "ra", ("dev-7", ("evil.example.com",), ()), None, "dns", 0),
    ("fail/ra-label", "ra", ("dev-7", (), ()), "devices", "labels", 0),
    ("fail/bootstrap-name", "bootstrap", ("SN999", (), ()), None, "cn", 0),
    ("fail/bootstrap-dns", "bootstrap", ("SN123", ("SN124.devices.example.com",), ()), None, "dns", 0),
    ("fail/bootstrap-label", "bootstrap", ("SN123", (), ()), "devices", "labels", 0),
]


@pytest.mark.parametrize("kind,names,label,rule,days", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_matrix(env: Env, kind: str, names: tuple[str, tuple[str, ...], tuple[str, ...]], label: str | None,
                rule: str | None, days: int) -> None:
    auth, ident = _who(env, kind)
    cn, dns, ips = names
    csr = build_csr(generate_key("ec:P-256"), cn=cn, dns=dns, ips=ips)
    r, cert = enroll(env.srv, csr, label=label, **auth)
    if rule is None:
        assert r.status == 200 and cert is not None, r.body
        assert cert.subject.rfc4514_string() == f"CN={cn}"  # an RA's certificate names the device, not the RA
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=days) <= life <= timedelta(days=days, minutes=6), life
        check_audit(env.srv, ident, csr, label or "default", event="issued", cert=cert)
    else:
        assert r.status == 403 and f"rule '{rule}'" in r.body.decode(), r.body
        assert r.body.count(b"\n") == 1 and r.header("Content-Type") == "text/plain; charset=utf-8"
        check_audit(env.srv, ident, csr, label or "default", event="refused", detail=f"403 not authorized: policy")
        assert f"rule '{rule}'" in last_audit(env.srv, ident)["detail"]


@pytest.mark.parametrize("kind,limit", [pytest.param("user", 2, id="fail/user-rate"),
                                        pytest.param("cert", 3, id="fail/cert-rate"),
                                        pytest.param("ra", 4, id="fail/ra-rate")])
def test_rate_limit_across_workers(env: Env, kind: str, limit: int) -> None:
    """Counted in the store: the requests are steered to alternate between the two
    worker processes (tests/workers.py), so each worker alone saw fewer than
    ``limit`` of them, yet the one over the limit is refused."""
    from policy_support import PKCS10
    from support import basic
    from workers import https_on_worker, worker_pids
    if kind == "user":
        auth, ident, cn = {"user": RL}, "user:rl", "rl-dev"
    else:
        cp, kp, cert = env.certs["gw-rate" if kind == "cert" else "ra-rate"]
        auth, ident = {"tls": (cp, kp)}, f"cert:{cert.subject.rfc4514_string()}"
        cn = "gw-rate" if kind == "cert" else "dev-rate"
    headers = {**PKCS10, **({"Authorization": basic(*auth["user"])} if "user" in auth else {})}
    ctx = env.srv.ssl_context(*auth["tls"]) if "tls" in auth else None
    served: list[int] = []
    for i in range(limit + 1):
        csr = build_csr(generate_key("ec:P-256"), cn=cn)
        r, pid = https_on_worker(env.srv, "POST", "simpleenroll", base64.b64encode(csr) + b"\n",
                                 avoid={served[-1]} if served else set(), headers=headers, ctx=ctx)
        served.append(pid)
        if i < limit:
            assert r.status == 200, (i, r.body)
    assert r.status == 403 and b"rule 'rate'" in r.body, r.body
    # Both workers issued, and the refusing worker had itself issued fewer than `limit`:
    # only a count shared through the store refuses there.
    issued_by = {pid: served[:limit].count(pid) for pid in set(served)}
    assert set(served) == set(worker_pids(env.srv)) and len(issued_by) == 2 and min(issued_by.values()) >= 1, served
    assert issued_by[served[-1]] < limit, served
    check_audit(env.srv, ident, csr, "default", event="refused", detail="rule 'rate'")
    issued = [e for e in last_n(env, ident, limit + 1) if e["event"] == "issued"]
    assert len(issued) == limit


def last_n(env: Env, ident: str, n: int) -> list[dict[str, Any]]:
    from policy_support import audit
    return audit(env.srv, "--identity", ident, "--limit", str(n))


def test_bootstrap_enrolls_its_derived_names_once_unless_allowed_again(env: Env) -> None:
    auth, ident = _who(env, "bootstrap")
    first = build_csr(generate_key("ec:P-256"), cn="SN123", dns=["SN123.devices.example.com"])
    r, cert = enroll(env.srv, first, **auth)
    assert r.status == 200 and cert is not None, r.body
    check_audit(env.srv, ident, first, "default", event="issued", cert=cert)
    again = build_csr(generate_key("ec:P-256"), cn="SN123")
    r, _ = enroll(env.srv, again, **auth)
    assert r.status == 403 and b"rule 'once'" in r.body, r.body
    check_audit(env.srv, ident, again, "default", event="refused", detail="rule 'once'")
    listed = estkit("bootstrap", "list", "--dir", str(env.srv.dir)).stdout.decode().splitlines()
    key, who, _at, serial = listed[0].split("\t")
    assert who == ident and serial == format(cert.serial_number, "x") and key.startswith("cert:")
    estkit("bootstrap", "allow", key, "--dir", str(env.srv.dir))
    r, cert2 = enroll(env.srv, again, **auth)
    assert r.status == 200 and cert2 is not None, r.body
    assert estkit("bootstrap", "allow", "cert:nothing", "--dir", str(env.srv.dir), check=False).returncode == 1


def test_ra_waives_linking_but_not_other_certificates(env: Env) -> None:
    """RFC 7030 §3.7: a label may waive proof-of-possession linking for RAs (id-kp-cmcRA) only."""
    csr = build_csr(generate_key("ec:P-256"), cn="dev-linked", dns=["dev-linked.devices.example.com"])
    r, cert = enroll(env.srv, csr, label="linked", **_who(env, "ra")[0])
    assert r.status == 200 and cert is not None, r.body
    r, _ = enroll(env.srv, build_csr(generate_key("ec:P-256"), cn="gw-1"), label="linked", **_who(env, "cert")[0])
    assert r.status == 400 and b"linking is required" in r.body


def _cmc(env: Env, label: str | None, cn: str, dns: list[str]) -> tuple[int, Any]:
    """A Full PKI Request signed by the RA for a device's PKCS#10 (RFC 7030 §3.7, RFC 5272 §3.2.1.3.1)."""
    device = generate_key("ec:P-256")
    return _ra_cmc(env, label, requests=[TaggedRequest(1, "tcr", build_csr(device, cn=cn, dns=dns))])


def _ra_cmc(env: Env, label: str | None, *, requests: Sequence[TaggedRequest] = (),
            controls: Sequence[Control] = ()) -> tuple[int, Any]:
    """A Full PKI Request signed by the RA certificate ra-1."""
    cp, kp, ra = env.certs["ra-1"]
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    ra_key = load_pem_private_key(kp.read_bytes(), None)
    req = build_cmc_request(ra_key, requests=requests, controls=controls, signer_cert=ra)  # type: ignore[arg-type]
    conn = http.client.HTTPSConnection("localhost", env.srv.port, context=env.srv.ssl_context(), timeout=30)
    path = f"/.well-known/est/{label}/fullcmc" if label else "/.well-known/est/fullcmc"
    conn.request("POST", path, body=base64.b64encode(req.der) + b"\n", headers={"Content-Type": c.CT_CMC_REQUEST})
    resp = conn.getresponse()
    status, body = resp.status, resp.read()
    conn.close()
    return status, parse_cmc_response(base64.b64decode(body))


@pytest.mark.parametrize("label,cn,dns,status,rule", [
    pytest.param(None, "dev-cmc", ["dev-cmc.devices.example.com"], 200, None, id="ok/ra-cmc-for-device"),
    pytest.param(None, "dev-cmc", ["evil.example.com"], 403, "dns", id="fail/ra-cmc-outside-policy"),
    # CVE-2020-28942's shape: an RA's request must not reach a label (CA) outside its policy.
    pytest.param("devices", "dev-cmc", [], 403, "labels", id="fail/ra-cmc-other-label"),
])
def test_ra_fullcmc_is_authorized_like_simpleenroll(env: Env, label: str | None, cn: str, dns: list[str],
                                                    status: int, rule: str | None) -> None:
    got, reply = _cmc(env, label, cn, dns)
    assert got == status
    ident = f"cert:{env.certs['ra-1'][2].subject.rfc4514_string()}"
    e = last_audit(env.srv, ident)
    if rule is None:
        cert = next(x for x in reply.certificates if x.subject.rfc4514_string() == f"CN={cn}")
        assert e["event"] == "issued" and e["serial"] == format(cert.serial_number, "x")
    else:
        st = reply.statuses[0]
        assert st.fail_info == FAIL_INFO["badIdentity"] and f"rule '{rule}'" in (st.status_string or ""), st
        assert e["event"] == "refused" and f"rule '{rule}'" in e["detail"] and e["label"] == (label or "default")


@pytest.mark.parametrize("cn,label,rule", [
    pytest.param("dev-rv", None, None, id="ok/ra-revokes-within-policy"),
    pytest.param("printer-rv", None, "cn", id="fail/ra-revokes-other-name"),
    pytest.param("dev-rv2", "devices", "labels", id="fail/ra-revokes-other-label"),
])
def test_ra_revokes_only_within_its_policy(env: Env, cn: str, label: str | None, rule: str | None) -> None:
    """RFC 5272 §6.11 on behalf of others: an RA revokes only what its policy would let it request."""
    _cp, _kp, target = issue_cert(env.srv, env.tmp, cn, user=ALICE, label=label)
    serial = format(target.serial_number, "x")
    got, reply = _ra_cmc(env, None, controls=[ctl_revoke_request(1, target.issuer, target.serial_number, 1)])
    listed = estkit("certs", "list", "--revoked", "--dir", str(env.srv.dir)).stdout.decode()
    ident = f"cert:{env.certs['ra-1'][2].subject.rfc4514_string()}"
    e = audit(env.srv, "--serial", serial, "--limit", "1")[0]
    if rule is None:
        assert got == 200 and serial in listed.lower(), (got, reply.statuses)
        assert e["event"] == "revoked" and e["identity"] == ident
    else:
        st = reply.statuses[0]
        assert got == 403 and st.fail_info == FAIL_INFO["badIdentity"], st
        assert f"rule '{rule}'" in (st.status_string or ""), st
        assert serial not in listed.lower()
        assert e["event"] == "refused" and e["identity"] == ident and f"rule '{rule}'" in e["detail"]


@pytest.mark.parametrize("op,kind,cn,label,rule", [
    pytest.param("simplereenroll", "cert", "gw-1", None, None, id="ok/reenroll-own-name"),
    pytest.param("simplereenroll", "cert", "gw-1", "devices", "labels", id="fail/reenroll-label"),
    pytest.param("serverkeygen", "user", "bob", None, None, id="ok/serverkeygen-own-name"),
    pytest.param("serverkeygen", "user", "mallory", None, "cn", id="fail/serverkeygen-name"),
    pytest.param("serverkeygen", "user", "bob", "devices", "labels", id="fail/serverkeygen-label"),
])
def test_every_issuing_operation_is_authorized(env: Env, op: str, kind: str, cn: str, label: str | None,
                                               rule: str | None) -> None:
    auth, ident = _who(env, kind)
    csr = build_csr(generate_key("ec:P-256"), cn=cn)
    r, _ = enroll(env.srv, csr, label=label, op=op, **auth)
    if rule is None:
        assert r.status == 200, r.body
        e = last_audit(env.srv, ident, "issued")
        assert e["detail"] == op and e["csr_fingerprint"] == check_fp(csr)
    else:
        assert r.status == 403 and f"rule '{rule}'" in r.body.decode(), r.body
        check_audit(env.srv, ident, csr, label or "default", event="refused", detail=f"{op}: 403")


def check_fp(csr: bytes) -> str:
    from policy_support import fingerprint
    return fingerprint(csr)
