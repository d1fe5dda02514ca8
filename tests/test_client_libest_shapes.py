"""The client against servers shaped like Cisco libest's example estserver
(tests/est_shapes_server.py, a real HTTPS server in a thread):

* /csrattrs as base64 followed by a NUL byte (counted in Content-Length): the
  library and ``estclient`` read it, and enroll, reenroll, renew and
  serverkeygen (which all look at /csrattrs first) go on;
* an unreadable /csrattrs never stops an enrollment that does not need it:
  a warning, then the defaults (RFC 7030 §4.5.2 makes /csrattrs advisory);
* a server that ignores the request for an encrypted server-generated key
  (RFC 7030 §4.4.1.2) and answers a plaintext ``application/pkcs8``: a
  downgrade, refused unless the caller allows a plaintext key.
"""

from __future__ import annotations

import base64
import warnings
from pathlib import Path
from typing import Any

import pytest
from client_pki import Pki, make_pki, write_pair
from cryptography.hazmat.primitives.asymmetric import ec
from est_shapes_server import ShapesConfig, ShapesServer, shapes_server
from support import VENV_BIN, run

from estkit.client import ClientCertificate, CsrAttrsWarning, CsrSpec, DigestAuth, EstClient, EstError, ProtocolError
from estkit.protocol.csrattrs import encode_csrattrs, key_type_attribute
from estkit.protocol.keys import key_type_of

ESTCLIENT = str(VENV_BIN / "estclient")
P384 = encode_csrattrs([a for a in [key_type_attribute("ec:P-384")] if a is not None])


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _client(s: ShapesServer, cfg: ShapesConfig, **kw: Any) -> EstClient:
    return EstClient(s.url(), trust=s.trust, auth=DigestAuth(cfg.user, cfg.password), **kw)


NUL_BODIES = [
    pytest.param(b"\x00", id="ok/only-a-nul-is-empty"),
    pytest.param(base64.b64encode(P384) + b"\x00", id="ok/base64-then-nul-libest"),
    pytest.param(base64.b64encode(P384) + b"\n\x00", id="ok/base64-newline-nul"),
    pytest.param(base64.b64encode(P384) + b"\r\n\x00\x00 \t", id="ok/base64-crlf-nuls-blanks"),
]


@pytest.mark.parametrize("body", NUL_BODIES)
def test_csrattrs_with_trailing_nul_is_read(pki: Pki, body: bytes) -> None:
    """The NUL-terminated answer is really decoded: the P-384 it asks for is used."""
    cfg = ShapesConfig(csrattrs_body=body)
    with shapes_server(pki, cfg) as s:
        client = _client(s, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a readable answer warns about nothing
            want = "ec:P-256" if body == b"\x00" else "ec:P-384"
            assert client.key_type() == want
            key, cert = client.enroll(cn="nul-dev")
    assert key_type_of(key.public_key()) == want and cert.public_key() == key.public_key()


def test_every_operation_that_reads_csrattrs_works_against_libest_shapes(pki: Pki, tmp_path: Path) -> None:
    """enroll, reenroll and serverkeygen through the library, each on a fresh client."""
    cfg = ShapesConfig(csrattrs_body=base64.b64encode(P384) + b"\x00")
    tls_key, tls_cert = pki.leaf("tls-dev")
    cp, kp = write_pair(tmp_path, "tls", tls_key, tls_cert)
    with shapes_server(pki, cfg) as s:
        _k, cert = _client(s, cfg).enroll(cn="op-enroll")
        assert cert.subject.rfc4514_string() == "CN=op-enroll"
        rk, rcert = _client(s, cfg, client_cert=ClientCertificate(cp, kp)).reenroll()
        assert rcert.public_key() == rk.public_key() and rcert.subject == tls_cert.subject
        sk, scert = _client(s, cfg).serverkeygen(cn="op-kg")
        assert scert.public_key() == sk.public_key()  # type: ignore[comparison-overlap]
    assert sum(p.endswith("/csrattrs") for p in cfg.paths) == 3


@pytest.mark.parametrize("body,why,status", [
    pytest.param(b"this is not base64 !!\n", "not valid base64", 200, id="fail-read/bad-base64"),
    pytest.param(base64.b64encode(b"\x04\x03abc") + b"\n", "not a CsrAttrs", 200, id="fail-read/not-csrattrs-der"),
    pytest.param(b"<html>Internal error</html>\n", "not valid base64", 200, id="fail-read/html"),
    pytest.param(b"csrattrs backend down\n", "csrattrs backend down", 500, id="fail-read/server-error-500"),
])
def test_unreadable_csrattrs_warns_and_enrolls_with_defaults(pki: Pki, body: bytes, why: str, status: int) -> None:
    cfg = ShapesConfig(csrattrs_body=body, csrattrs_status=status)
    with shapes_server(pki, cfg) as s:
        client = _client(s, cfg)
        with pytest.raises(EstError, match=why):  # asked for explicitly, it is an error
            client.csrattrs()
        client = _client(s, cfg)
        with pytest.warns(CsrAttrsWarning, match=f"unreadable /csrattrs.*{why}.*defaults"):
            key, cert = client.enroll(cn="default-dev")
    assert key_type_of(key.public_key()) == "ec:P-256" and cert.public_key() == key.public_key()


def test_client_that_needs_no_csrattrs_does_not_fetch_it(pki: Pki) -> None:
    """A finished CSR with explicit linking: /csrattrs is not even asked for."""
    cfg = ShapesConfig(csrattrs_body=b"garbage\n")
    with shapes_server(pki, cfg) as s:
        key = ec.generate_private_key(ec.SECP256R1())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cert = _client(s, cfg).simpleenroll(CsrSpec(key, cn="no-attrs"), link=False)
    assert cert.public_key() == key.public_key()
    assert not any(p.endswith("/csrattrs") for p in cfg.paths)


# -- RFC 7030 §4.4.1.2: an encrypted key was asked for; a plaintext one is a downgrade ----------


@pytest.mark.parametrize("allow", [False, True], ids=["fail/plaintext-key-refused", "ok/plaintext-key-allowed"])
def test_library_refuses_plaintext_key_when_encryption_was_asked(pki: Pki, tmp_path: Path, allow: bool) -> None:
    cfg = ShapesConfig()
    cp, kp = write_pair(tmp_path, "tls", *pki.leaf("kg-tls"))
    with shapes_server(pki, cfg) as s:
        client = _client(s, cfg, client_cert=ClientCertificate(cp, kp))
        if allow:
            key, cert = client.serverkeygen(CsrSpec(None, cn="kg-enc"), encrypt=True, allow_plaintext_key=True)
            assert cert.public_key() == key.public_key()  # type: ignore[comparison-overlap]
        else:
            with pytest.raises(ProtocolError, match="asked for an encrypted key.*plaintext"):
                client.serverkeygen(CsrSpec(None, cn="kg-enc"), encrypt=True)
    assert any(p.endswith("/serverkeygen") for p in cfg.paths)  # the request was really made


# -- the same through estclient, a real process --------------------------------------------------


def _estclient(s: ShapesServer, cfg: ShapesConfig, *args: str) -> tuple[int, str]:
    p = run([ESTCLIENT, args[0], "--server", s.url(), "--trust", str(s.trust), "--user", cfg.user, *args[1:]],
            check=False, env={"ESTCLIENT_PASSWORD": cfg.password}, timeout=120)
    return p.returncode, p.stdout.decode() + p.stderr.decode()


@pytest.mark.e2e
@pytest.mark.parametrize("allow,code", [(False, 1), (True, 0)],
                         ids=["fail/cli-plaintext-key-refused", "ok/cli-allow-plaintext-key"])
def test_cli_serverkeygen_encrypt_downgrade(pki: Pki, tmp_path: Path, allow: bool, code: int) -> None:
    cfg = ShapesConfig()
    cp, kp = write_pair(tmp_path, "tls", *pki.leaf("kg-tls"))
    with shapes_server(pki, cfg) as s:
        rc, err = _estclient(s, cfg, "serverkeygen", "--cn", "kg-cli", "--cert", str(cp), "--key", str(kp),
                             "--encrypt", *(["--allow-plaintext-key"] if allow else []),
                             "--key-out", str(tmp_path / "kg.key"), "--cert-out", str(tmp_path / "kg.pem"))
    assert rc == code, err
    if allow:
        assert (tmp_path / "kg.key").exists() and (tmp_path / "kg.pem").exists()
    else:
        assert "asked for an encrypted key" in err and "--allow-plaintext-key" in err
        assert not (tmp_path / "kg.key").exists() and not (tmp_path / "kg.pem").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("body,warned", [
    pytest.param(base64.b64encode(P384) + b"\x00", False, id="ok/cli-nul-terminated"),
    pytest.param(b"%%% not base64\n", True, id="ok/cli-unreadable-warns"),
])
def test_cli_enroll_renew_serverkeygen_against_libest_csrattrs(pki: Pki, tmp_path: Path, body: bytes,
                                                               warned: bool) -> None:
    cfg = ShapesConfig(csrattrs_body=body)
    with shapes_server(pki, cfg) as s:
        rc, err = _estclient(s, cfg, "enroll", "--cn", "cli-nul", "--dir", str(tmp_path / "cred"))
        assert rc == 0, err
        assert ("warning: unreadable /csrattrs" in err) == warned, err
        rc, err = _estclient(s, cfg, "renew", "--dir", str(tmp_path / "cred"), "--force")
        assert rc == 0 and "renewed: serial" in err, err
        rc, err = _estclient(s, cfg, "serverkeygen", "--cn", "cli-kg", "--key-out", str(tmp_path / "kg.key"),
                             "--cert-out", str(tmp_path / "kg.pem"))
        assert rc == 0, err
    # enroll, renew (a simplereenroll) and serverkeygen each read /csrattrs first, then went on.
    ops = [p.rsplit("/", 1)[1] for p in cfg.paths]
    assert ops.count("csrattrs") == 3 and {"simpleenroll", "simplereenroll", "serverkeygen"} <= set(ops)
