"""HTTP Digest on a CA label as libest's client computes it (interop-notes):
libest's estclient sends to ``/.well-known/est/<label>/<op>`` but computes the
Digest ``uri`` (RFC 7616 §3.4.6) over ``/.well-known/est/<op>``.  The server
accepts exactly that one alias (the same operation with the label removed) and
nothing wider: every other uri that is not the request-target is a 401.

A real ``estkit serve``; the Digest answers are computed here from a fresh
challenge, the way libest computes them (MD5, qop=auth)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from policy_support import PKCS10
from support import ServerProcess, estkit, https, init_server_dir, server

from estkit.protocol.csr import build_csr
from estkit.protocol.framing import decode_b64
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

USER, PW, LABEL = "libest-dev", "libest pw 7", "dig"
WK = "/.well-known/est"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = init_server_dir(tmp_path_factory.mktemp("digest-uri") / "data")
    estkit("user", "add", USER, "--dir", str(d), "--password-stdin", "--digest", input=PW + "\n")

    def configure(doc: dict[str, Any]) -> None:
        doc["labels"][LABEL] = {**doc["labels"]["default"], "digest_auth": ["MD5"]}
    with server(d, configure=configure) as s:
        yield s


def _challenge_nonce(srv: ServerProcess, op: str, body: bytes) -> tuple[str, str]:
    r = https(srv, "POST", op, body, label=LABEL, headers=PKCS10)
    assert r.status == 401, r.body
    ch = next(v for v in r.headers.get_all("WWW-Authenticate") if v.startswith("Digest "))
    return re.search(r'nonce="([^"]+)"', ch).group(1), re.search(r'realm="([^"]+)"', ch).group(1)  # type: ignore[union-attr]


def _digest(method: str, uri: str, nonce: str, realm: str, *, hashed_uri: str | None = None) -> str:
    """The Authorization header libest sends (MD5, qop=auth); ``hashed_uri`` lets the
    response be computed over another uri than the one named."""
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5(f"{USER}:{realm}:{PW}"), md5(f"{method}:{hashed_uri or uri}")
    resp = md5(f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}")
    return (f'Digest username="{USER}", realm="{realm}", nonce="{nonce}", uri="{uri}", qop=auth, '
            f'nc=00000001, cnonce="0a4f113b", response="{resp}", algorithm=MD5')


CASES = [
    pytest.param("simpleenroll", f"{WK}/{LABEL}/simpleenroll", None, 200, id="ok/exact-uri"),
    pytest.param("simpleenroll", f"{WK}/simpleenroll", None, 200, id="ok/libest-uri-without-label"),
    pytest.param("simpleenroll", f"{WK}/simplereenroll", None, 401, id="fail/uri-other-operation"),
    pytest.param("simpleenroll", f"{WK}/other/simpleenroll", None, 401, id="fail/uri-other-label"),
    pytest.param("simpleenroll", "/simpleenroll", None, 401, id="fail/uri-op-only"),
    pytest.param("simpleenroll", f"{WK}/simpleenroll/", None, 401, id="fail/uri-trailing-slash"),
    pytest.param("simpleenroll", f"{WK}/simpleenroll?x=1", None, 401, id="fail/uri-with-query"),
    pytest.param("simpleenroll", f"{WK}/{LABEL}/{LABEL}/simpleenroll", None, 401, id="fail/uri-label-twice"),
    pytest.param("simpleenroll", f"{WK}/simpleenroll", f"{WK}/{LABEL}/simpleenroll", 401,
                 id="fail/alias-named-but-other-uri-hashed"),
]


@pytest.mark.parametrize("op,uri,hashed,status", CASES)
def test_digest_uri_alias_is_exactly_the_label_removed(srv: ServerProcess, tmp_path: Path, op: str, uri: str,
                                                       hashed: str | None, status: int) -> None:
    cn = f"libest-{abs(hash(uri)) % 10**8}"
    body = base64.b64encode(build_csr(generate_key("ec:P-256"), cn=cn)) + b"\n"
    nonce, realm = _challenge_nonce(srv, op, body)
    r = https(srv, "POST", op, body, label=LABEL,
              headers={**PKCS10, "Authorization": _digest("POST", uri, nonce, realm, hashed_uri=hashed)})
    assert r.status == status, (r.status, r.body)
    if status == 401:
        reason = b"wrong user name or password" if hashed else b"uri does not match"
        assert reason in r.body and r.body.count(b"\n") == 1, r.body
    else:
        (cert,) = parse_certs_only(decode_b64(r.body))
        assert cert.subject.rfc4514_string() == f"CN={cn}"
