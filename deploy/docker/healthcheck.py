"""The container's HEALTHCHECK: GET https://127.0.0.1:PORT/readyz; exit 0 on 200.

It checks the local server's readiness, not its identity, so it does not
verify the TLS certificate (the port comes from $ESTKIT_LISTEN)."""

import os
import ssl
import sys
import urllib.request

port = os.environ.get("ESTKIT_LISTEN", "0.0.0.0:8443").rpartition(":")[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=ctx, timeout=4) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
    print(f"not ready: {exc}", file=sys.stderr)
    sys.exit(1)
