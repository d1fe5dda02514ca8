"""Every error path of the server, reached from a real request over real TLS
through a fake CA that fails on purpose (tests/fakeca.py): each EstError
becomes its status, a one-line text/plain reason and Retry-After where it
applies; anything else is a 500 that says nothing of what went wrong."""

from __future__ import annotations

import base64
import http.client
import logging
import ssl
from pathlib import Path

import pytest
from fakeca import PASSWORD, SECRET, USER, fake_server

from estkit.protocol.csr import build_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.pkcs7 import parse_certs_only

AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _post(port: int, ctx: ssl.SSLContext, cn: str, *, label: str | None = None, op: str = "simpleenroll"
          ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=20)
    path = f"/.well-known/est/{label}/{op}" if label else f"/.well-known/est/{op}"
    conn.request("POST", path, body=base64.b64encode(build_csr(generate_key("ec:P-256"), cn=cn)) + b"\n",
                 headers={"Content-Type": "application/pkcs10", "Authorization": AUTH})
    r = conn.getresponse()
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    conn.close()
    return out


@pytest.mark.parametrize("cn,status,retry,text", [
    pytest.param("device", 200, None, None, id="ok/issued"),
    pytest.param("forbidden", 403, None, "rule 'fake'", id="fail/forbidden"),
    pytest.param("pending", 202, "7", "waiting for approval", id="ok/pending-202-retry-after"),
    pytest.param("unavailable", 503, "3", "store is down", id="fail/unavailable-503-retry-after"),
    pytest.param("toomany", 429, "9", "slow down", id="fail/too-many-429-retry-after"),
    pytest.param("notfound", 404, None, "no such thing", id="fail/not-found"),
    pytest.param("badrequest", 400, None, "fake CA says no", id="fail/bad-request"),
    pytest.param("crash", 500, None, "internal server error", id="fail/crash-500-no-detail"),
])
def test_error_mapping(tmp_path: Path, caplog: pytest.LogCaptureFixture, cn: str, status: int, retry: str | None,
                       text: str | None) -> None:
    caplog.set_level(logging.INFO)
    with fake_server(tmp_path) as (port, ctx, _ca):
        got, headers, body = _post(port, ctx, cn)
    assert got == status, body
    assert headers.get("retry-after") == retry
    if status == 200:
        assert parse_certs_only(base64.b64decode(body))[0].subject.rfc4514_string() == "CN=device"
        return
    assert headers["content-type"].startswith("text/plain") and body.count(b"\n") == 1, body
    assert text is not None and text.encode() in body, body
    assert SECRET.encode() not in body and b"Traceback" not in body and b"RuntimeError" not in body
    if cn == "crash":  # logged for the operator, never sent to the peer
        assert any(r.levelno >= logging.ERROR for r in caplog.records)


def test_unknown_label_is_404(tmp_path: Path) -> None:
    with fake_server(tmp_path) as (port, ctx, _ca):
        got, _h, body = _post(port, ctx, "device", label="nolabel")
    assert got == 404 and b"unknown CA label" in body, body


def test_wrong_password_is_401_with_challenge(tmp_path: Path) -> None:
    with fake_server(tmp_path) as (port, ctx, ca):
        conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=20)
        conn.request("POST", "/.well-known/est/simpleenroll", body=b"MIIB\n",
                     headers={"Content-Type": "application/pkcs10",
                              "Authorization": "Basic " + base64.b64encode(b"fake-user:wrong").decode()})
        r = conn.getresponse()
        status, challenge = r.status, r.getheader("WWW-Authenticate")
        r.read()
        conn.close()
    assert status == 401 and challenge is not None and challenge.startswith("Basic ")
