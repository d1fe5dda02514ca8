"""Keep-alive load with wrk (one thread, C): cheap enough on the client side
that a 2-core machine's CPU goes to the server.  A Lua script rotates the
pre-generated CSRs as POST bodies and prints one JSON line at the end.

wrk resumes TLS sessions when it reconnects, so it is only used where
connections are kept alive (no reconnects); full handshakes are measured
with loadgen.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from procstat import sample

__all__ = ["have_wrk", "run_wrk", "LUA"]

LUA = r"""
local reqs = {}
local n = 0
function init(args)
  local method, path, auth, bodies = args[1], args[2], args[3], args[4]
  local headers = {["User-Agent"] = "estkit-bench"}
  if auth ~= "" then headers["Authorization"] = auth end
  if method == "POST" then
    headers["Content-Type"] = "application/pkcs10"
    headers["Content-Transfer-Encoding"] = "base64"
    for line in io.lines(bodies) do
      if #line > 0 then reqs[#reqs + 1] = wrk.format("POST", path, headers, line .. "\n") end
    end
  else
    reqs[1] = wrk.format("GET", path, headers)
  end
  n = math.random(#reqs)
end
function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def have_wrk() -> bool:
    """True when wrk is installed."""
    return shutil.which("wrk") is not None


def _wrk(url: str, lua: Path, args: list[str], concurrency: int, seconds: int) -> dict[str, int]:
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), url, "--", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    for line in out.decode().splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, int] = json.loads(line[8:])
            return result
    raise RuntimeError(f"wrk printed no result: {out.decode(errors='replace')[-500:]}")


def run_wrk(url: str, *, method: str, auth: str, bodies: Path | None, concurrency: int, duration: float,
            warmup: float, workdir: Path, server_pid: int | None) -> dict[str, object]:
    """A warm-up run, then the measured run with the server's CPU sampled
    around it; the same fields as loadgen.py's result."""
    import resource
    lua = workdir / "wrk-est.lua"
    if not lua.exists():
        lua.write_text(LUA)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    args = [method, path, auth, str(bodies or "")]
    if warmup > 0:
        _wrk(url, lua, args, concurrency, max(1, round(warmup)))
    seconds = max(1, round(duration))
    before = sample(server_pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = _wrk(url, lua, args, concurrency, seconds)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = sample(server_pid)
    elapsed = res["duration_us"] / 1e6
    errors = {k: res[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts") if res[k]}
    ok = res["requests"] - res["status_errors"]
    return {
        "generator": "wrk -t1 (keep-alive, Lua rotating CSRs)", "mode": "keepalive", "concurrency": concurrency,
        "duration_s": elapsed, "requests": res["requests"], "ok": ok, "rate_per_s": ok / elapsed,
        "p50_ms": res["p50_us"] / 1000, "p90_ms": res["p90_us"] / 1000, "p99_ms": res["p99_us"] / 1000,
        "max_ms": res["max_us"] / 1000,
        "statuses": {"2xx/3xx": ok, **({"non-2xx/3xx": res["status_errors"]} if res["status_errors"] else {})},
        "errors": errors, "connections": concurrency, "sessions_reused": None, "tls_versions": {},
        "loadgen_cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        "_cpu": (before, after),
    }
