#!/usr/bin/env python3
"""Held connections against one server (issue 17, design 2's question): open
``--idle`` TLS connections that complete the handshake and send nothing, then
time one HTTP Basic simpleenroll on a new connection, and read the server's
RSS and thread count.  The hostile-clients rule it checks: held connections
must not lock out a new client (estkit serve closes the one idle longest).

    python bench/idle.py --port 8443 --trust DIR/ca.pem --pid PID --idle 1000
"""

from __future__ import annotations

import argparse
import base64
import socket
import ssl
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fixture  # noqa: E402
import procstat  # noqa: E402


def _status(pid: int) -> tuple[float, int]:
    rss, threads = 0.0, 0
    for p in procstat.tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return rss, threads


def enroll_once(port: int, ctx: ssl.SSLContext, csr_b64: bytes, timeout: float) -> tuple[str, float]:
    auth = base64.b64encode(f"{fixture.BENCH_USER}:{fixture.BENCH_PASSWORD}".encode()).decode()
    req = (f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n"
           f"Content-Type: application/pkcs10\r\nContent-Length: {len(csr_b64)}\r\nConnection: close\r\n\r\n"
           ).encode() + csr_b64
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as tcp, \
                ctx.wrap_socket(tcp, server_hostname="localhost") as s:
            s.sendall(req)
            first = s.recv(64)
        return first.split(b"\r\n", 1)[0].decode(errors="replace"), time.perf_counter() - t0
    except OSError as exc:
        return f"error: {type(exc).__name__}", time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--trust", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--csr", required=True, help="a file of base64 CSRs, one a line (fixture.write_csrs)")
    a = ap.parse_args()
    ctx = ssl.create_default_context(cafile=a.trust)
    csr = Path(a.csr).read_text().split()[0].encode()
    rss0, th0 = _status(a.pid)
    print(f"before: {enroll_once(a.port, ctx, csr, 30)}; RSS {rss0:.0f} MB, {th0} threads")
    held = []
    t0 = time.perf_counter()
    for _ in range(a.idle):
        try:
            tcp = socket.create_connection(("127.0.0.1", a.port), timeout=5)
            held.append(ctx.wrap_socket(tcp, server_hostname="localhost"))
        except OSError:
            held.append(None)  # type: ignore[arg-type]
    opened = sum(1 for h in held if h is not None)
    rss1, th1 = _status(a.pid)
    print(f"{opened} of {a.idle} idle connections open after {time.perf_counter() - t0:.1f}s; "
          f"RSS {rss1:.0f} MB, {th1} threads")
    print(f"with them held: {enroll_once(a.port, ctx, csr, 30)}")
    for h in held:
        if h is not None:
            h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
