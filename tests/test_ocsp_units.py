"""``estkit init --public-url``: the base URL and the listening address derived from it (fast tier)."""

from __future__ import annotations

import pytest

from estkit.cli.initdir import InitError, public_listen


@pytest.mark.parametrize("url,base,listen", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "127.0.0.1:8080"),
    ("http://localhost:8080/", "http://localhost:8080", "127.0.0.1:8080"),
    ("http://est.example.com", "http://est.example.com", "0.0.0.0:80"),
    ("http://est.example.com:80", "http://est.example.com", "0.0.0.0:80"),
    ("http://[::1]:8080", "http://[::1]:8080", "[::1]:8080"),
], ids=["ok/ip", "ok/localhost", "ok/name-default-port", "ok/explicit-80", "ok/ipv6"])
def test_public_listen(url: str, base: str, listen: str) -> None:
    assert public_listen(url) == (base, listen)


@pytest.mark.parametrize("url", ["https://est.example", "http://est.example/crl", "http://est.example:x",
                                 "http://user@est.example", "ftp://est.example", "http://est.example?a=b"],
                         ids=["fail/https", "fail/path", "fail/bad-port", "fail/userinfo", "fail/scheme",
                              "fail/query"])
def test_public_listen_refused(url: str) -> None:
    with pytest.raises(InitError, match="--public-url"):
        public_listen(url)
