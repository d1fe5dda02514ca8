"""A closed-loop HTTPS load generator, run as its own process.

``C`` threads, each with one request in flight, for ``warmup + duration``
seconds.  Two connection modes:

- ``new``: a new TCP connection and a *full* TLS handshake per request (how
  devices enroll).  The standard library's ``ssl`` only resumes a session
  when it is given ``session=``, which this tool never does; every
  connection's ``session_reused`` is still checked and counted, so the
  result proves it.  The request says ``Connection: close`` and the response
  is read to EOF, so the same code drives ``openssl s_server -www`` (which
  answers HTTP/1.0 and closes) and an EST server.
- ``keepalive``: one connection per thread, requests one after the other.

The TLS handshake and socket I/O run in OpenSSL and the kernel with the GIL
released, so the threads overlap where it matters; the Python per request is
a few dozen lines.  Prints ``window-start`` and ``window-end`` lines when the
measurement window opens and closes (the caller samples the server's CPU
there), then one JSON line with the results.

    python loadgen.py --host 127.0.0.1 --port 8443 --path /.well-known/est/simpleenroll \\
        --method POST --bodies csrs.txt --user demo:pw --cafile ca.pem -c 8 -d 5 --mode new
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Result", "main"]


@dataclass
class Result:
    """What one thread saw inside the measurement window."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    reused: int = 0
    tls_versions: dict[str, int] = field(default_factory=dict)


def _request(method: str, host: str, path: str, headers: dict[str, str], body: bytes, close: bool) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: estkit-bench"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_response(sock: ssl.SSLSocket, buf: bytearray, to_eof: bool) -> tuple[int, bytearray]:
    """Read one response; returns (status, leftover bytes).  ``to_eof`` reads
    until the peer closes (HTTP/1.0 or Connection: close)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response headers")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split()[1])
    length = None
    for h in header_lines:
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = bytearray(rest)
    if to_eof and length is None:
        while True:
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            body += chunk
        return status, bytearray()
    if length is None:
        raise ConnectionError("keep-alive response without Content-Length")
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the response body")
        body += chunk
    leftover = body[length:]
    if to_eof:  # drain to EOF so the close is part of the measured request, as for a device
        try:
            while sock.recv(65536):
                pass
        except (ssl.SSLError, ConnectionResetError):
            pass
    return status, leftover


class Generator:
    """The threads and their shared clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.ctx = ssl.create_default_context(cafile=args.cafile) if args.cafile else ssl._create_unverified_context()
        if args.insecure:
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        if args.cert:
            self.ctx.load_cert_chain(args.cert, args.key)
        if args.tls_max == "1.2":
            self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        headers: dict[str, str] = {}
        if args.user:
            headers["Authorization"] = "Basic " + base64.b64encode(args.user.encode()).decode()
        if args.method == "POST":
            headers["Content-Type"] = args.content_type
            headers["Content-Transfer-Encoding"] = "base64"
        bodies = [b""]
        if args.bodies:
            with open(args.bodies, "rb") as f:
                bodies = [line.strip() + b"\n" for line in f if line.strip()]
        close = args.mode == "new"
        self.requests = [_request(args.method, args.sni or args.host, args.path, headers, b, close) for b in bodies]
        self.t0 = 0.0
        self.start = 0.0
        self.end = 0.0

    def _connect(self, res: Result) -> ssl.SSLSocket:
        raw = socket.create_connection((self.a.host, self.a.port), timeout=self.a.timeout,
                                       source_address=(self.a.source, 0) if self.a.source else None)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.ctx.wrap_socket(raw, server_hostname=self.a.sni or self.a.host)  # never session=: full handshake
        if time.monotonic() >= self.start:
            res.connections += 1
            if sock.session_reused:
                res.reused += 1
            v = sock.version() or "?"
            res.tls_versions[v] = res.tls_versions.get(v, 0) + 1
        return sock

    def run_thread(self, index: int, res: Result) -> None:
        reqs = self.requests
        n = index * 7919
        sock: ssl.SSLSocket | None = None
        buf = bytearray()
        new = self.a.mode == "new"
        # --rate: each thread sends at most rate/C requests a second (an open-loop
        # pace, as a guesser holding back to stay unnoticed); 0: as fast as answered.
        gap = self.a.concurrency / self.a.rate if self.a.rate > 0 else 0.0
        next_at = time.monotonic() + (index * gap / self.a.concurrency if gap else 0.0)
        while True:
            if gap:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + gap, time.monotonic() - gap)
            t = time.monotonic()
            if t >= self.end:
                break
            req = reqs[n % len(reqs)]
            n += 1
            try:
                if sock is None:
                    sock = self._connect(res)
                    buf = bytearray()
                sock.sendall(req)
                status, buf = _read_response(sock, buf, to_eof=new)
                if new:
                    sock.close()
                    sock = None
            except (OSError, ValueError, IndexError) as exc:
                if t >= self.start:
                    name = type(exc).__name__
                    res.errors[name] = res.errors.get(name, 0) + 1
                if sock is not None:
                    sock.close()
                    sock = None
                time.sleep(0.01)
                continue
            done = time.monotonic()
            if self.start <= t and done <= self.end:  # requests wholly inside the window
                res.latencies.append(done - t)
                key = str(status)
                res.statuses[key] = res.statuses.get(key, 0) + 1
        if sock is not None:
            sock.close()

    def run(self) -> dict[str, object]:
        a = self.a
        self.t0 = time.monotonic()
        self.start = self.t0 + a.warmup
        self.end = self.start + a.duration
        results = [Result() for _ in range(a.concurrency)]
        threads = [threading.Thread(target=self.run_thread, args=(i, r), daemon=True) for i, r in enumerate(results)]
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        for t in threads:
            t.start()
        time.sleep(max(0.0, self.start - time.monotonic()))
        print("window-start", flush=True)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(max(0.0, self.end - time.monotonic()))
        print("window-end", flush=True)
        ru2 = resource.getrusage(resource.RUSAGE_SELF)
        for t in threads:
            t.join(a.timeout + 5)
        lat = sorted(x for r in results for x in r.latencies)
        statuses: dict[str, int] = {}
        errors: dict[str, int] = {}
        versions: dict[str, int] = {}
        for r in results:
            for src, dst in ((r.statuses, statuses), (r.errors, errors), (r.tls_versions, versions)):
                for k, v in src.items():
                    dst[k] = dst.get(k, 0) + v
        ok = sum(v for k, v in statuses.items() if k.startswith("2"))
        del ru0
        return {
            "generator": "loadgen.py (threads, stdlib ssl)",
            "mode": a.mode, "concurrency": a.concurrency, "duration_s": a.duration,
            "requests": len(lat), "ok": ok, "rate_per_s": ok / a.duration,
            "p50_ms": _pct(lat, 0.50) * 1000, "p90_ms": _pct(lat, 0.90) * 1000,
            "p99_ms": _pct(lat, 0.99) * 1000, "max_ms": (lat[-1] if lat else 0.0) * 1000,
            "statuses": statuses, "errors": errors,
            "connections": sum(r.connections for r in results),
            "sessions_reused": sum(r.reused for r in results),
            "tls_versions": versions,
            "loadgen_cpu_s": (ru2.ru_utime + ru2.ru_stime) - (ru1.ru_utime + ru1.ru_stime),
        }


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sni", default="", help="TLS server name and Host header (default: --host)")
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET", choices=["GET", "POST"])
    p.add_argument("--content-type", default="application/pkcs10")
    p.add_argument("--bodies", default="", help="file with one request body per line, rotated")
    p.add_argument("--user", default="", help="USER:PASSWORD for HTTP Basic")
    p.add_argument("--cafile", default="")
    p.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    p.add_argument("--cert", default="")
    p.add_argument("--key", default="")
    p.add_argument("--tls-max", default="", choices=["", "1.2"])
    p.add_argument("--source", default="", help="local address to connect from (e.g. 127.0.0.2: another client)")
    p.add_argument("--rate", type=float, default=0.0, help="requests per second in all (0: closed loop)")
    p.add_argument("--mode", default="new", choices=["new", "keepalive"])
    p.add_argument("-c", "--concurrency", type=int, default=8)
    p.add_argument("-d", "--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    result = Generator(args).run()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
