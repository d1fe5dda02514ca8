"""The estkit client library end to end against a real ``estkit serve`` over
TLS: every operation, Basic and client-certificate authentication, linking on
and off, bootstrap with the right and a wrong fingerprint, a 202 approved by
``estkit requests approve``, serverkeygen plain and encrypted, fullcmc enroll,
renew and revoke.  Results checked with ``openssl verify`` and ``openssl pkey``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from client_pki import pem, write_pair
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import ApproveOnPending, ServerProcess, estkit, require_tool, run, server

from estkit.client import (BasicAuth, ClientCertificate, CsrSpec, EstClient, TrustError,
                           confirm_fingerprint, sha256_fingerprint)
from estkit.errors import BadRequest, Forbidden, NotFound, Pending, Unauthorized
from estkit.protocol.keys import generate_key, key_type_of

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW = "device-maker", "pw-4-devices"
SECRET, IDENT = "cmc-shared-7", "dev-7"


def _configure(doc: dict[str, Any]) -> None:
    base = dict(doc["labels"]["default"])
    doc["labels"]["default"]["cmc_secrets_file"] = "cmc-secrets"
    doc["labels"]["link"] = {**base, "require_linking": True}
    doc["labels"]["held"] = {**base, "manual_approval": True, "pending_retry_after": 1}
    doc["labels"]["kg"] = {**base, "serverkeygen": True}
    doc["labels"]["kgenc"] = {**base, "serverkeygen": True, "serverkeygen_encrypt": True}
    # A device's certificate may ask for a server-generated key for another name on any label only
    # because this table grants it (without one: its own names on its own label, docs/policy.md).
    doc["policies"] = {"devices": {"kinds": ["cert"]}}
    doc["labels"]["p384"] = {**base, "allowed_key_types": ["ec:P-384"]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("client-e2e") / "d"
    d.mkdir()
    (d / "cmc-secrets").write_text(f"{IDENT}:{SECRET}\n")
    with server(d, users={USER: PW}, configure=_configure, init_args=("--intermediate",)) as s:
        yield s


def _url(srv: ServerProcess) -> str:
    return f"https://localhost:{srv.port}"


def _client(srv: ServerProcess, **kw: Any) -> EstClient:
    kw.setdefault("trust", srv.ca_pem)
    return EstClient(_url(srv), **kw)


def check_with_openssl(tmp: Path, srv: ServerProcess, key: Any, cert: x509.Certificate, name: str = "dev") -> None:
    """openssl verify against ca.pem, and the key is the certificate's (openssl pkey)."""
    require_tool("openssl")
    cp, kp = write_pair(tmp, name, key, cert)
    chain = tmp / "chain.pem"
    chain.write_bytes(pem(*_client(srv).cacerts()))
    run(["openssl", "verify", "-CAfile", str(srv.ca_pem), "-untrusted", str(chain), str(cp)])
    from_key = run(["openssl", "pkey", "-in", str(kp), "-pubout"]).stdout
    from_cert = run(["openssl", "x509", "-in", str(cp), "-noout", "-pubkey"]).stdout
    assert from_key == from_cert and b"BEGIN PUBLIC KEY" in from_key


def _enrolled(srv: ServerProcess, tmp: Path, cn: str) -> tuple[Any, x509.Certificate, ClientCertificate]:
    key, cert = _client(srv, auth=BasicAuth(USER, PW)).enroll(cn=cn, dns=[f"{cn}.example"])
    cp, kp = write_pair(tmp, cn, key, cert)
    return key, cert, ClientCertificate(cp, kp)


# -- /cacerts, /csrattrs ---------------------------------------------------------------

@pytest.mark.parametrize("label", [None, "kg"], ids=["ok/default-label", "ok/label"])
def test_cacerts_is_the_chain_in_ca_pem(srv: ServerProcess, label: str | None) -> None:
    certs = _client(srv, label=label).cacerts()
    assert len(certs) == 2  # issuing CA and root (estkit init --intermediate)
    root = x509.load_pem_x509_certificates(srv.ca_pem.read_bytes())[0]
    assert root in certs and root.subject == root.issuer


def test_csrattrs_drives_key_generation(srv: ServerProcess, tmp_path: Path) -> None:
    """RFC 7030 §4.5 / RFC 9908: a label allowing only P-384 gets a P-384 key."""
    client = _client(srv, label="p384", auth=BasicAuth(USER, PW))
    assert client.key_type() == "ec:P-384"
    key, cert = client.enroll(cn="p384-dev")
    assert key_type_of(cert.public_key()) == "ec:P-384"
    check_with_openssl(tmp_path, srv, key, cert)
    assert b"P-384" in run(["openssl", "pkey", "-in", str(tmp_path / "dev.key"), "-noout", "-text"]).stdout
    assert not _client(srv).linking_required() and _client(srv, label="link").linking_required()


# -- bootstrap (RFC 7030 §4.1.1) ----------------------------------------------------------

def test_bootstrap_with_the_right_fingerprint_then_enroll(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("openssl")
    printed = run(["openssl", "x509", "-in", str(srv.ca_pem), "-noout", "-fingerprint", "-sha256"]).stdout
    fingerprint = printed.decode().split("=", 1)[1].strip()
    client = EstClient(_url(srv), auth=BasicAuth(USER, PW))  # no trust anchors at all
    certs = client.cacerts(bootstrap=confirm_fingerprint(fingerprint.lower()))
    assert fingerprint in [sha256_fingerprint(c) for c in certs]
    # The confirmed CA is now the Explicit trust anchor: the next connections are verified with it.
    key, cert = client.enroll(cn="bootstrapped")
    check_with_openssl(tmp_path, srv, key, cert)


def test_fail_bootstrap_with_a_wrong_fingerprint_stops(srv: ServerProcess) -> None:
    client = EstClient(_url(srv), auth=BasicAuth(USER, PW))
    seen: list[tuple[str, ...]] = []

    def confirm(offer: Any) -> bool:
        seen.append(offer.fingerprints)
        return confirm_fingerprint("AB" * 32)(offer)

    with pytest.raises(TrustError, match="not confirmed"):
        client.cacerts(bootstrap=confirm)
    assert len(seen) == 1 and len(seen[0]) == 1  # one root offered
    with pytest.raises(TrustError):  # still no trust anchor: the system store does not know this CA
        client.enroll(cn="never")


def test_fail_untrusted_server_gets_no_credentials(srv: ServerProcess, tmp_path: Path) -> None:
    """RFC 7030 §3.6: a server whose certificate does not verify is never sent the request."""
    other = tmp_path / "other"
    init = estkit("init", "--dir", str(other))
    assert init.returncode == 0
    before = srv.log().count("simpleenroll")
    with pytest.raises(TrustError, match="not trusted"):
        EstClient(_url(srv), trust=other / "ca.pem", auth=BasicAuth(USER, PW, preemptive=True)).enroll(cn="x")
    assert srv.log().count("simpleenroll") == before


# -- enrollment ------------------------------------------------------------------------

@pytest.mark.parametrize("preemptive", [False, True], ids=["ok/basic-after-401-challenge", "ok/basic-preemptive"])
def test_simpleenroll_basic(srv: ServerProcess, tmp_path: Path, preemptive: bool) -> None:
    client = _client(srv, auth=BasicAuth(USER, PW, preemptive=preemptive))
    key = generate_key("ec:P-256")
    cert = client.simpleenroll(CsrSpec(key, cn="basic-dev", dns=("basic.example",), ips=("192.0.2.7",)))
    assert cert.subject.rfc4514_string() == "CN=basic-dev"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["basic.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    check_with_openssl(tmp_path, srv, key, cert)


def test_ok_simpleenroll_with_a_finished_csr(srv: ServerProcess, tmp_path: Path) -> None:
    require_tool("openssl")
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "o.key"), "-subj", "/CN=openssl-csr", "-out", str(tmp_path / "o.csr")])
    cert = _client(srv, auth=BasicAuth(USER, PW)).simpleenroll((tmp_path / "o.csr").read_bytes())
    key = serialization.load_pem_private_key((tmp_path / "o.key").read_bytes(), None)
    check_with_openssl(tmp_path, srv, key, cert)


@pytest.mark.parametrize("same_key", [True, False], ids=["ok/renew-same-key", "ok/rekey"])
def test_simplereenroll_with_client_certificate(srv: ServerProcess, tmp_path: Path, same_key: bool) -> None:
    old_key, old, tls = _enrolled(srv, tmp_path, f"re-{same_key}")
    client = _client(srv, client_cert=tls)  # no password: the certificate authenticates
    key, cert = client.reenroll(key=old_key if same_key else None)
    assert cert.subject == old.subject and cert.serial_number != old.serial_number
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert (cert.public_key() == old.public_key()) is same_key
    check_with_openssl(tmp_path, srv, key, cert)


@pytest.mark.parametrize("label,link,outcome", [
    ("link", None, "ok"), ("link", True, "ok"), (None, True, "ok"), (None, None, "ok"),
    ("link", False, "refused"),
], ids=["ok/linking-from-csrattrs", "ok/linking-forced", "ok/linking-where-optional", "ok/no-linking",
        "fail/required-linking-off"])
def test_linking(srv: ServerProcess, tmp_path: Path, label: str | None, link: bool | None, outcome: str) -> None:
    """RFC 7030 §3.5: challengePassword = base64(tls-unique) of the connection
    carrying the CSR (held to TLS 1.2); the server checks it."""
    client = _client(srv, label=label, auth=BasicAuth(USER, PW))
    if outcome == "refused":
        with pytest.raises(BadRequest) as err:
            client.enroll(cn="unlinked", link=link)
        assert err.value.status == 400 and "link" in err.value.reason
        return
    key, cert = client.enroll(cn=f"linked-{link}", link=link)
    check_with_openssl(tmp_path, srv, key, cert)


@pytest.mark.parametrize("link", [False, True], ids=["ok/plain", "ok/linked-csr-rebuilt-per-connection"])
def test_pending_then_approved(srv: ServerProcess, tmp_path: Path, link: bool) -> None:
    """RFC 7030 §4.2.3: 202 with Retry-After; an operator approves meanwhile;
    the client's resend of the same request gets the certificate.  A linked
    CSR is re-signed for every connection (§3.5) and still finds its request."""
    on_pending = ApproveOnPending(srv.dir)
    waits, approvals = on_pending.waits, on_pending.approvals

    before = len(_requests(srv))
    client = _client(srv, label="held", auth=BasicAuth(USER, PW), pending_retries=20, on_pending=on_pending)
    key, cert = client.enroll(cn=f"held-dev-{link}", link=link)
    approvals[0].join()
    assert len(_requests(srv)) == before + 1  # every resend found the one request
    assert waits and waits[0].retry_after == 1 and waits[0].operation == "simpleenroll"
    check_with_openssl(tmp_path, srv, key, cert)


def _requests(srv: ServerProcess) -> list[str]:
    return estkit("requests", "list", "--dir", str(srv.dir), "--status", "all").stdout.decode().splitlines()


def test_fail_pending_beyond_the_limit(srv: ServerProcess) -> None:
    client = _client(srv, label="held", auth=BasicAuth(USER, PW), pending_retries=1)
    with pytest.raises(Pending) as err:
        client.enroll(cn="held-forever")
    assert err.value.status == 202 and err.value.retry_after == 1 and "waiting for approval" in err.value.reason


@pytest.mark.parametrize("case,exc,status,text", [
    ("wrong-password", Unauthorized, 401, "wrong user name or password"),
    ("no-credentials", Unauthorized, 401, "HTTP 401"),
    ("unknown-label", NotFound, 404, "unknown CA label"),
    ("reenroll-without-cert", Unauthorized, 401, "client certificate"),
], ids=["fail/wrong-password", "fail/no-credentials", "fail/unknown-label", "fail/reenroll-without-cert"])
def test_refusals_are_typed(srv: ServerProcess, case: str, exc: type, status: int, text: str) -> None:
    auth = {"wrong-password": BasicAuth(USER, "nope"), "no-credentials": None}.get(case, BasicAuth(USER, PW))
    client = _client(srv, auth=auth, label="nosuch" if case == "unknown-label" else None)
    key = generate_key("ec:P-256")
    with pytest.raises(exc) as err:
        if case == "reenroll-without-cert":
            client.simplereenroll(CsrSpec(key, cn="x"))
        else:
            client.enroll(cn="x", key=key)
    assert err.value.status == status and text in err.value.reason


# -- /serverkeygen -----------------------------------------------------------------------

def test_serverkeygen_plain(srv: ServerProcess, tmp_path: Path) -> None:
    key, cert = _client(srv, label="kg", auth=BasicAuth(USER, PW)).serverkeygen(cn="kg-dev", dns=["kg.example"])
    assert cert.subject.rfc4514_string() == "CN=kg-dev"
    check_with_openssl(tmp_path, srv, key, cert)


@pytest.mark.parametrize("label,encrypt,tls_key", [("kg", True, "ec:P-256"), ("kgenc", False, "rsa:2048"),
                                                   ("kgenc", True, "ec:P-384")],
                         ids=["ok/asked-ec", "ok/label-encrypts-rsa", "ok/label-and-asked-p384"])
def test_serverkeygen_encrypted(srv: ServerProcess, tmp_path: Path, label: str, encrypt: bool, tls_key: str) -> None:
    """RFC 7030 §4.4.2: the key comes enveloped to the TLS client certificate and is opened with its key."""
    tk = generate_key(tls_key)
    tcert = _client(srv, auth=BasicAuth(USER, PW)).simpleenroll(CsrSpec(tk, cn=f"tls-{tls_key}"))
    cp, kp = write_pair(tmp_path, "tls", tk, tcert)
    client = _client(srv, label=label, auth=BasicAuth(USER, PW), client_cert=ClientCertificate(cp, kp))
    key, cert = client.serverkeygen(CsrSpec(cn="kg-enc"), encrypt=encrypt)
    check_with_openssl(tmp_path, srv, key, cert)


def test_ok_serverkeygen_linked_and_encrypted(srv: ServerProcess, tmp_path: Path) -> None:
    _k, _c, tls = _enrolled(srv, tmp_path, "kg-link-tls")
    client = _client(srv, label="kg", client_cert=tls)
    key, cert = client.serverkeygen(CsrSpec(cn="kg-linked"), encrypt=True, link=True)
    check_with_openssl(tmp_path, srv, key, cert)


# -- /fullcmc ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["basic", "identity-proof", "crmf-identity-proof"],
                         ids=["ok/basic", "ok/identity-proof-v2", "ok/crmf-identity-proof-v2"])
def test_fullcmc_enroll(srv: ServerProcess, tmp_path: Path, how: str) -> None:
    if how == "basic":
        key, cert = _client(srv, auth=BasicAuth(USER, PW)).fullcmc_enroll(cn="cmc-basic", dns=["cmc.example"])
    else:
        key, cert = _client(srv).fullcmc_enroll(cn=f"cmc-{how}", shared_secret=SECRET.encode(), identification=IDENT,
                                                crmf=how.startswith("crmf"))
    check_with_openssl(tmp_path, srv, key, cert)


def test_fullcmc_renew_then_revoke(srv: ServerProcess, tmp_path: Path) -> None:
    old_key, old, tls = _enrolled(srv, tmp_path, "cmc-life")
    key, cert = _client(srv, client_cert=tls).fullcmc_renew()
    assert cert.subject == old.subject and cert.public_key() != old.public_key()
    check_with_openssl(tmp_path, srv, key, cert, "renewed")
    cp, kp = write_pair(tmp_path, "renewed2", key, cert)
    renewed = ClientCertificate(cp, kp)
    _client(srv, client_cert=renewed).fullcmc_revoke(reason=1)
    with pytest.raises(Forbidden, match="revoked"):
        _client(srv, client_cert=renewed).reenroll()
    # The certificate it replaced is unaffected.
    _client(srv, client_cert=tls).reenroll(key=old_key)


def test_fail_fullcmc_wrong_secret(srv: ServerProcess) -> None:
    with pytest.raises(Unauthorized) as err:
        _client(srv).fullcmc_enroll(cn="cmc-bad", shared_secret=b"wrong", identification=IDENT)
    assert err.value.status == 401 and "badIdentity" in err.value.reason


