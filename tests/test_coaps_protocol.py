"""EST-coaps (RFC 9148) wire values without a network: multipart-core, the
error-code table, discovery links, coaps:// URLs."""

from __future__ import annotations

import pytest
from aiocoap.numbers.codes import Code

from estkit.client.transport import Endpoint
from estkit.errors import (BadRequest, EstError, Forbidden, MethodNotAllowed, NotFound, PayloadTooLarge, Pending,
                           ServiceUnavailable, TooManyRequests, Unauthorized, UnsupportedMediaType)
from estkit.protocol.coaps import (code_for_error, decode_multipart_core, encode_multipart_core, status_for_code)
from estkit.server.coap.resources import link_format


@pytest.mark.parametrize("parts,wire", [
    pytest.param([], b"\x80", id="ok/empty"),
    pytest.param([(284, b"ab"), (281, b"c")], b"\x84\x19\x01\x1c\x42ab\x19\x01\x19\x41c", id="ok/key-and-certs"),
    pytest.param([(0, b"x" * 30)], b"\x82\x00\x58\x1e" + b"x" * 30, id="ok/one-byte-length"),
    pytest.param([(287, b"y" * 300)], b"\x82\x19\x01\x1f\x59\x01\x2c" + b"y" * 300, id="ok/two-byte-length"),
])
def test_multipart_core_round_trip(parts: list[tuple[int, bytes]], wire: bytes) -> None:
    """RFC 8710 §2: a CBOR array of Content-Format and byte-string pairs."""
    assert encode_multipart_core(parts) == wire
    assert decode_multipart_core(wire) == parts


@pytest.mark.parametrize("wire", [
    pytest.param(b"", id="fail/empty"),
    pytest.param(b"\x81\x00", id="fail/odd-number-of-items"),
    pytest.param(b"\xa2\x00\x40", id="fail/map-not-array"),
    pytest.param(b"\x82\x40\x40", id="fail/format-not-an-integer"),
    pytest.param(b"\x82\x00\x60", id="fail/text-not-bytes"),
    pytest.param(b"\x82\x00\x45ab", id="fail/truncated-payload"),
    pytest.param(b"\x82\x00\x40\x00", id="fail/trailing-data"),
    pytest.param(b"\x82\x1f\x40", id="fail/indefinite-length"),
])
def test_multipart_core_refuses_what_it_is_not(wire: bytes) -> None:
    with pytest.raises(ValueError):
        decode_multipart_core(wire)


@pytest.mark.parametrize("exc,code", [
    pytest.param(BadRequest("x"), Code.BAD_REQUEST, id="ok/400"),
    pytest.param(Unauthorized("x"), Code.UNAUTHORIZED, id="ok/401"),
    pytest.param(Forbidden("x"), Code.FORBIDDEN, id="ok/403"),
    pytest.param(NotFound("x"), Code.NOT_FOUND, id="ok/404"),
    pytest.param(MethodNotAllowed("x"), Code.METHOD_NOT_ALLOWED, id="ok/405"),
    pytest.param(EstError("x", status=406), Code.NOT_ACCEPTABLE, id="ok/406"),
    pytest.param(PayloadTooLarge("x"), Code.REQUEST_ENTITY_TOO_LARGE, id="ok/413"),
    pytest.param(UnsupportedMediaType("x"), Code.UNSUPPORTED_CONTENT_FORMAT, id="ok/415"),
    pytest.param(TooManyRequests("x", retry_after=5), Code.TOO_MANY_REQUESTS, id="ok/429"),
    pytest.param(Pending("x", retry_after=5), Code.SERVICE_UNAVAILABLE, id="ok/202-pending-is-5.03"),
    pytest.param(ServiceUnavailable("x"), Code.SERVICE_UNAVAILABLE, id="ok/503"),
    pytest.param(EstError("x", status=418), Code.BAD_REQUEST, id="ok/other-4xx"),
    pytest.param(EstError("x"), Code.INTERNAL_SERVER_ERROR, id="ok/500"),
])
def test_error_codes_one_table_both_ways(exc: EstError, code: Code) -> None:
    """RFC 9148 §5: the HTTPS side's errors as CoAP codes; the client maps back."""
    assert code_for_error(exc) == code
    if not isinstance(exc, Pending) and exc.status != 418:
        assert status_for_code(code) == exc.status


@pytest.mark.parametrize("query,shorts", [
    pytest.param((), ["crts", "sen", "sren", "att", "skg", "skc"], id="ok/all"),
    pytest.param(("rt=ace.est*",), ["crts", "sen", "sren", "att", "skg", "skc"], id="ok/rt-prefix"),
    pytest.param(("rt=ace.est.sen",), ["sen"], id="ok/rt-exact"),
    pytest.param(("ct=285",), ["att"], id="ok/ct"),
    pytest.param(("ct=287",), ["crts", "sen", "sren"], id="ok/ct-one-of-several"),
    pytest.param(("rt=core.rd*",), [], id="ok/other-rt-nothing"),
])
def test_discovery_links(query: tuple[str, ...], shorts: list[str]) -> None:
    """RFC 9148 §4.1 / RFC 6690 §4.1: filtered /.well-known/core."""
    links = link_format(query).decode()
    assert [part.split(">")[0].rsplit("/", 1)[1] for part in links.split(",") if part] == shorts


@pytest.mark.parametrize("url,host,port,scheme", [
    pytest.param("coaps://est.example", "est.example", 5684, "coaps", id="ok/coaps-default-port"),
    pytest.param("coaps://[::1]:6000", "::1", 6000, "coaps", id="ok/coaps-ipv6"),
    pytest.param("https://est.example", "est.example", 443, "https", id="ok/https-unchanged"),
])
def test_coaps_urls(url: str, host: str, port: int, scheme: str) -> None:
    e = Endpoint.parse(url)
    assert (e.host, e.port, e.scheme, e.prefix) == (host, port, scheme, "/.well-known/est")


@pytest.mark.parametrize("url", [pytest.param("coap://est.example", id="fail/coap-without-dtls"),
                                 pytest.param("http://est.example", id="fail/http")])
def test_fail_insecure_urls(url: str) -> None:
    with pytest.raises(ValueError, match="coaps://"):
        Endpoint.parse(url)
