"""The client against a real HTTPS EST test server that speaks like other EST
servers (tests/est_shapes_server.py): HTTP Digest (RFC 7616, SHA-256 and MD5,
qop=auth) verified with a known password, libest's framing and connection
habits, other response shapes, an HTTP-date Retry-After, and the server
identity checks of RFC 7030 §3.6.1 (host name, IP, id-kp-cmcRA)."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_pki import Pki, make_pki, pem
from cryptography import x509
from est_shapes_server import ShapesConfig, shapes_server

from estkit.client import (BasicAuth, CsrSpec, DigestAuth, EstClient, PasswordAuth, PendingWait, ProtocolError,
                           TrustError)
from estkit.errors import EstError, Unauthorized
from estkit.protocol.keys import generate_key, key_type_of


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.mark.parametrize("offered,auth_kind,expect_alg", [
    (("SHA-256", "MD5"), "digest", "SHA-256"),
    (("MD5", "SHA-256"), "any", "SHA-256"),
    (("MD5",), "digest", "MD5"),
], ids=["ok/sha256-preferred", "ok/any-scheme-picks-strongest", "ok/md5-only"])
def test_digest_enroll(pki: Pki, offered: tuple[str, ...], auth_kind: str, expect_alg: str) -> None:
    cfg = ShapesConfig(algorithms=offered)
    with shapes_server(pki, cfg) as s:
        auth = DigestAuth(cfg.user, cfg.password) if auth_kind == "digest" else PasswordAuth(cfg.user, cfg.password)
        key = generate_key("ec:P-256")
        cert = EstClient(s.url(), trust=s.trust, auth=auth).simpleenroll(CsrSpec(key, cn="digest-dev"))
    assert cert.public_key() == key.public_key() and cert.subject.rfc4514_string() == "CN=digest-dev"
    assert [p["algorithm"] for p in cfg.seen] == [expect_alg]
    assert cfg.seen[0]["nc"] == "00000001" and len(cfg.seen[0]["cnonce"]) >= 16
    # First request without credentials (the challenge comes first), then the answer on a new connection.
    assert len(cfg.bodies) == 2 and all(b.endswith(b"\n") and b.count(b"\n") == 1 for b in cfg.bodies)


def test_ok_digest_stale_nonce_is_answered_again(pki: Pki) -> None:
    cfg = ShapesConfig(stale_first=True)
    with shapes_server(pki, cfg) as s:
        EstClient(s.url(), trust=s.trust, auth=DigestAuth(cfg.user, cfg.password)).enroll(cn="stale")
    assert len(cfg.seen) == 1 and len(cfg.bodies) == 3


@pytest.mark.parametrize("auth", [DigestAuth("digest-user", "wrong"), BasicAuth("digest-user", "digest-pw"), None],
                         ids=["fail/wrong-password", "fail/basic-only-client", "fail/no-credentials"])
def test_digest_refused(pki: Pki, auth: PasswordAuth | None) -> None:
    with shapes_server(pki) as s:
        with pytest.raises(Unauthorized) as err:
            EstClient(s.url(), trust=s.trust, auth=auth).enroll(cn="x")
    assert err.value.status == 401
    if auth is not None and auth.password == "wrong":
        assert "wrong password" in err.value.reason  # the server's own text
    else:
        assert err.value.challenges == ("digest", "digest")  # type: ignore[attr-defined]


def test_ok_libest_shapes_cacerts_enroll_serverkeygen(pki: Pki) -> None:
    """Wrapped base64 without CTE, the chain in the enroll answer, a multipart
    with the certificate first, LF, quoted boundary and a PKCS#1 key."""
    cfg = ShapesConfig()
    with shapes_server(pki, cfg) as s:
        client = EstClient(s.url(), trust=s.trust, auth=DigestAuth(cfg.user, cfg.password))
        assert set(client.cacerts()) == {pki.root, pki.sub}
        assert client.csrattrs().entries == () and client.key_type() == "ec:P-256"  # 204
        key, cert = client.enroll(cn="chain-dev")
        assert cert.public_key() == key.public_key() and not cert.extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca
        skey, scert = client.serverkeygen(cn="kg-dev")
    assert key_type_of(skey.public_key()) == "rsa:2048" and scert.public_key() == skey.public_key()  # type: ignore[arg-type]


def test_ok_202_with_http_date_retry_after(pki: Pki) -> None:
    cfg = ShapesConfig()
    waits: list[PendingWait] = []
    with shapes_server(pki, cfg) as s:
        client = EstClient(s.url(), trust=s.trust, label="held", auth=DigestAuth(cfg.user, cfg.password),
                           pending_retries=3, on_pending=waits.append)
        key, cert = client.enroll(cn="held")
    assert cert.public_key() == key.public_key()
    assert len(waits) == 1 and 1 <= waits[0].retry_after <= 3


@pytest.mark.parametrize("host,dns,ips,ra,ok", [
    ("localhost", ("localhost",), (), False, True),
    ("127.0.0.1", ("localhost",), ("127.0.0.1",), False, True),
    ("localhost", ("est.example.com",), (), False, False),
    ("127.0.0.1", ("localhost",), (), False, False),
    ("localhost", ("ra.example.com",), (), True, True),
], ids=["ok/dns-name", "ok/ip-address", "fail/other-name", "fail/ip-not-in-san", "ok/cmc-ra-certificate"])
def test_server_identity(pki: Pki, host: str, dns: tuple[str, ...], ips: tuple[str, ...], ra: bool, ok: bool) -> None:
    """RFC 7030 §3.6.1: the URL's host, or id-kp-cmcRA; otherwise nothing is sent."""
    cfg = ShapesConfig()
    with shapes_server(pki, cfg, dns=dns, ips=ips, ra=ra) as s:
        client = EstClient(s.url(host), trust=s.trust, auth=DigestAuth(cfg.user, cfg.password))
        if ok:
            client.enroll(cn="id")
        else:
            with pytest.raises(TrustError, match="does not name"):
                client.enroll(cn="id")
            assert cfg.bodies == []


def test_fail_wrong_trust_anchor(pki: Pki, tmp_path: Path) -> None:
    other = make_pki()
    (tmp_path / "other.pem").write_bytes(pem(other.root))
    cfg = ShapesConfig()
    with shapes_server(pki, cfg) as s:
        with pytest.raises(TrustError, match="not trusted"):
            EstClient(s.url(), trust=tmp_path / "other.pem", auth=DigestAuth(cfg.user, cfg.password)).enroll(cn="x")
    assert cfg.bodies == []


def test_fail_bootstrap_never_answers_a_challenge(pki: Pki) -> None:
    """RFC 7030 §4.1.1: on the unauthenticated bootstrap connection no HTTP
    credentials are sent, not even when the server asks."""
    cfg = ShapesConfig(protect_cacerts=True)
    with shapes_server(pki, cfg) as s:
        client = EstClient(s.url(), auth=DigestAuth(cfg.user, cfg.password))
        with pytest.raises(Unauthorized):
            client.cacerts(bootstrap=lambda offer: True)
        assert cfg.authorizations == []
        # With the trust anchor, the same request is answered and succeeds.
        assert set(EstClient(s.url(), trust=s.trust, auth=DigestAuth(cfg.user, cfg.password)).cacerts()) == \
            {pki.root, pki.sub}
    assert len(cfg.authorizations) == 1


@pytest.mark.parametrize("prefix,ok", [("/moved", True), ("/elsewhere", False)],
                         ids=["ok/same-origin-redirect-followed", "fail/cross-origin-redirect-refused"])
def test_redirects(pki: Pki, prefix: str, ok: bool) -> None:
    """RFC 7030 §3.2.1: same-origin redirects are followed on a new connection;
    another origin is not followed."""
    with shapes_server(pki) as s:
        client = EstClient(s.url() + prefix, trust=s.trust)
        if ok:
            assert set(client.cacerts()) == {pki.root, pki.sub}
        else:
            with pytest.raises(ProtocolError, match="another origin"):
                client.cacerts()


@pytest.mark.parametrize("target", ["other-server", "same-server-other-host-name"],
                         ids=["fail/authenticated-redirect-to-other-server",
                              "fail/authenticated-redirect-to-same-server-by-ip"])
def test_cross_origin_redirect_after_authentication_never_resends_credentials(pki: Pki, target: str) -> None:
    """RFC 7030 §3.2.1: the server redirects an enrollment it has just
    authenticated (Digest) to another origin; the client refuses, and the other
    origin gets no request at all, so neither the credentials nor the CSR."""
    other_cfg = ShapesConfig()
    cfg = ShapesConfig()
    with shapes_server(pki, cfg) as s, shapes_server(pki, other_cfg) as other:
        cfg.redirect_after_auth = other.url() if target == "other-server" else s.url("127.0.0.1")
        client = EstClient(s.url(), trust=s.trust, auth=DigestAuth(cfg.user, cfg.password))
        with pytest.raises(EstError) as err:
            client.enroll(cn="redirected")
    # The first origin challenged, then verified the credentials: they really were in play ...
    assert len(cfg.seen) == 1 and len(cfg.authorizations) == 1
    # ... and were never sent anywhere else (nor anything at all) ...
    assert other_cfg.authorizations == [] and other_cfg.paths == [] and other_cfg.bodies == []
    assert [p for p in cfg.paths if p.endswith("/simpleenroll")] == ["/.well-known/est/simpleenroll"] * 2
    # ... because the client refused to follow.
    assert isinstance(err.value, ProtocolError) and "another origin" in err.value.reason
