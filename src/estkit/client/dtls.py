"""A blocking DTLS 1.2 client connection (RFC 6347) for EST-coaps (RFC 9148 §3).

pyOpenSSL over memory BIOs and a connected UDP socket: the handshake's
flights are retransmitted when OpenSSL's timer says so (RFC 6347 §4.2.4).
The server's certificate is verified against the trust anchors in the
handshake and its name checked afterwards as on HTTPS (RFC 7030 §3.6.1);
the client's tls-unique (its own Finished, RFC 5929 §3.1) is kept for
proof-of-possession linking.
"""

from __future__ import annotations

import socket
import time
from types import TracebackType

from cryptography import x509
from OpenSSL import SSL, crypto

from estkit.client.auth import ClientCertificate
from estkit.client.errors import NetworkError, TrustError

__all__ = ["DtlsConnection"]

DTLS1_2_VERSION = 0xFEFD  # RFC 6347 §4.1, not named by pyOpenSSL
MTU = 1280


class DtlsConnection:
    """One DTLS association to ``host:port``; ``send``/``recv`` carry whole records."""

    def __init__(self, host: str, port: int, *, trust_pem: str | None, verify: bool,
                 client_cert: ClientCertificate | None, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        ctx.set_min_proto_version(DTLS1_2_VERSION)
        ctx.set_max_proto_version(DTLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET)
        if verify:
            ctx.set_verify(SSL.VERIFY_PEER, None)
            store = ctx.get_cert_store()
            assert store is not None
            if trust_pem is None:
                ctx.set_default_verify_paths()  # the Implicit trust anchor store (RFC 7030 §3.6.1)
            else:
                for cert in x509.load_pem_x509_certificates(trust_pem.encode()):
                    store.add_cert(crypto.X509.from_cryptography(cert))
            if client_cert is not None:
                try:
                    if client_cert.key_password is not None:
                        password = client_cert.key_password
                        ctx.set_passwd_cb(lambda *_a: password)
                    ctx.use_certificate_chain_file(str(client_cert.cert_file))
                    ctx.use_privatekey_file(str(client_cert.key_file))
                except (OSError, SSL.Error) as exc:
                    raise ValueError(f"cannot load the DTLS client certificate: {exc}") from None
        else:
            ctx.set_verify(SSL.VERIFY_NONE, None)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(MTU)
        self.tls_unique: bytes | None = None
        self.peer_certificate: x509.Certificate | None = None

    def __enter__(self) -> DtlsConnection:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def handshake(self) -> None:
        """Connect and run the handshake (cookie exchange included) within the timeout."""
        try:
            self.sock.connect((self.host, self.port))
        except OSError as exc:
            raise NetworkError(f"cannot reach {self.host}:{self.port}: {exc}") from None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.conn.do_handshake()
                break
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                self._flush()
                reason = _reason(exc)
                if "certificate verify failed" in reason:
                    raise TrustError(f"the server's certificate is not trusted: {reason}") from None
                raise NetworkError(f"DTLS handshake with {self.host}:{self.port} failed: {reason}") from None
            self._flush()
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError(f"DTLS handshake with {self.host}:{self.port} timed out")
            wait = self.conn.DTLSv1_get_timeout()
            data = self._recv_datagram(min(left, wait if wait is not None else 1.0))
            if data is None:
                self.conn.DTLSv1_handle_timeout()
            else:
                self.conn.bio_write(data)
        self._flush()
        # RFC 5929 §3.1: the first Finished of a full handshake, the client's own.
        self.tls_unique = self.conn.get_finished()
        self.peer_certificate = self.conn.get_peer_certificate(as_cryptography=True)

    def _recv_datagram(self, wait: float) -> bytes | None:
        self.sock.settimeout(max(wait, 0.001))
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except OSError as exc:  # ICMP port unreachable: nobody listens there
            raise NetworkError(f"cannot reach {self.host}:{self.port}: {exc}") from None

    def _flush(self) -> None:
        out = b""
        while True:
            try:
                out += self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
        if out:
            try:
                self.sock.send(out)
            except OSError as exc:
                raise NetworkError(f"cannot reach {self.host}:{self.port}: {exc}") from None

    def send(self, plaintext: bytes) -> None:
        """One application record."""
        try:
            self.conn.send(plaintext)
        except SSL.Error as exc:
            raise NetworkError(f"DTLS send failed: {_reason(exc)}") from None
        self._flush()

    def recv(self, wait: float) -> bytes | None:
        """The next application record, or None when nothing came within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self.conn.recv(65536)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                raise NetworkError("the server closed the DTLS session") from None
            except SSL.Error as exc:
                raise NetworkError(f"DTLS error: {_reason(exc)}") from None
            self._flush()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self._recv_datagram(left)
            if data is None:
                return None
            self.conn.bio_write(data)

    def close(self) -> None:
        """close_notify, then close the socket."""
        try:
            if self.tls_unique is not None:
                self.conn.shutdown()
                self._flush()
        except (SSL.Error, NetworkError):
            pass
        self.sock.close()


def _reason(exc: SSL.Error) -> str:
    try:
        return str(exc.args[0][0][2])
    except (IndexError, TypeError):
        return str(exc) or type(exc).__name__
