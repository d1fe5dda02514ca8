"""The benchmark tool end to end in its quickest mode: a real ``estkit serve``,
the real load generators, ``openssl s_server`` for the ceiling.  It checks the
result's shape and the facts that make it honest (every new-connection
enrollment did a full handshake), never a timing threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import require_tool

pytestmark = pytest.mark.e2e  # real processes: left out of `make test-fast`

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench.py"

RUN_FIELDS = ("mode", "key", "store_rows", "concurrency", "generator", "rate_per_s", "p50_ms", "p99_ms", "requests",
              "ok", "statuses", "errors", "server_cpu_s", "server_cpu_ms_per_request", "server_switches_per_request",
              "loadgen_cpu_s", "repeats")


def _bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--duration", "0.6", "--warmup", "0.2", "--csrs", "8",
                        "--out", str(out), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads((out / "latest.json").read_text())
    assert (out / "latest.png").stat().st_size > 1000
    return doc


@pytest.mark.parametrize("keepalive_gen", ["wrk"], ids=["ok/keepalive-wrk"])
def test_quick_bench_end_to_end(tmp_path: Path, keepalive_gen: str) -> None:
    require_tool("openssl", *(["wrk"] if keepalive_gen == "wrk" else []))
    doc = _bench(tmp_path, "--keepalive-gen", keepalive_gen, "--stores", "0,50")
    assert doc["machine"]["nproc"] >= 1 and doc["target"].startswith("estkit serve --workers")
    runs = {(r["mode"], r["store_rows"]): r for r in doc["runs"]}
    assert set(runs) == {(m, s) for m in ("new", "keepalive", "cacerts") for s in (0, 50)}
    for r in doc["runs"]:
        for f in RUN_FIELDS:
            assert f in r, (f, r)
        assert r["ok"] > 0 and r["errors"] == {}, r
        assert r["server_cpu_s"] is not None and r["server_cpu_s"] >= 0
        assert r["server_switches_per_request"] is not None and r["server_switches_per_request"] >= 0, r
        if r["mode"] != "cacerts":  # an enrollment wakes a pool thread that was waiting for work
            assert r["server_switches_per_request"] > 0.5, r
    for s in (0, 50):
        new = runs[("new", s)]
        # Full handshakes only: no session resumed, a connection for every request.
        assert new["sessions_reused"] == 0 and new["connections"] >= new["requests"]
        assert set(new["tls_versions"]) == {"TLSv1.3"}
        assert new["statuses"] == {"200": new["ok"]}
        # s_server measured in turns with this figure's runs, and the ratio read against it
        assert len(new["ceiling_repeats"]) == 1 and new["ceiling_rate_per_s"] == new["ceiling_repeats"][0] > 0
        target = next(t for t in doc["targets"] if t["name"].startswith(f"new connection, 8 clients, p256, store {s}:"))
        assert f"of {new['ceiling_rate_per_s']:.0f}/s" in target["value"]
    assert runs[("keepalive", 0)]["generator"].startswith("wrk" if keepalive_gen == "wrk" else "loadgen")
    assert doc["prefill"] == [{"key": "p256", "rows": 50, "seconds": doc["prefill"][0]["seconds"]}]
    after = {e["store_rows"]: e["certificates"] for e in doc["rows_after"]}
    assert after[50] >= 50 + runs[("new", 50)]["ok"] + runs[("keepalive", 50)]["ok"]
    ceiling = doc["ceiling"][0]
    assert ceiling["server"] == "openssl s_server -www" and ceiling["sessions_reused"] == 0 and ceiling["ok"] > 0
    micro = doc["micro"]["p256"]
    assert micro["csr_verify_per_s"] > 0 and micro["cert_sign_per_s"] > 0
    # the CA's own one-thread cost, and the keep-alive target read against it (issue 17)
    assert micro["ca_enroll_ms"] > 0
    ka = next(t for t in doc["targets"] if t["name"].startswith("keep-alive, 8 clients, p256, store 0:"))
    assert f"the CA's {micro['ca_enroll_ms']:.2f} ms" in ka["value"], ka
    assert all(v > 0 for e in doc["rss_mb"] for v in e["peak"].values())
    names = [t["name"] for t in doc["targets"]]
    assert any("s_server" in n for n in names) and any("store 0 -> 50" in n for n in names)
    assert any("RSS" in n for n in names)


def test_quick_bench_keepalive_with_the_python_generator(tmp_path: Path) -> None:
    """--keepalive-gen loadgen (where wrk is missing): the kept-alive runs only, the rest
    of the quick run is checked above with wrk (a whole second quick run cost ~20 s of suite)."""
    require_tool("openssl")
    doc = _bench(tmp_path, "--keepalive-gen", "loadgen", "--modes", "keepalive", "--stores", "0", "--no-ceiling")
    (r,) = doc["runs"]
    assert r["mode"] == "keepalive" and r["generator"].startswith("loadgen"), r
    for f in RUN_FIELDS:
        assert f in r, (f, r)
    assert r["ok"] > 0 and r["errors"] == {} and r["statuses"] == {"200": r["ok"]}, r
    assert r["server_switches_per_request"] is not None and r["server_switches_per_request"] > 0.5, r


def test_bench_against_url(tmp_path: Path) -> None:
    """--url aims the same tool at any EST server (here an estkit one it did not start)."""
    require_tool("openssl")
    from support import server
    with server(tmp_path / "srv", users={"u": "pw-for-bench"}, workers=1) as srv:
        # --warmup 2: the first enrollment waits for the password's scrypt (N=2^17), which on a
        # loaded machine outlasts the quick run's whole measuring window.
        doc = _bench(tmp_path, "--warmup", "2", "--url", f"https://localhost:{srv.port}/.well-known/est",
                     "--trust", str(srv.ca_pem),
                     "--user", "u:pw-for-bench", "--modes", "new,cacerts", "--keepalive-gen", "loadgen",
                     "--server-pid", str(srv.proc.pid if srv.proc else 0))
    assert {r["mode"] for r in doc["runs"]} == {"new", "cacerts"}
    new = next(r for r in doc["runs"] if r["mode"] == "new")
    assert new["ok"] > 0 and new["sessions_reused"] == 0 and new["server_cpu_s"] is not None


def test_bench_attack_scenario(tmp_path: Path) -> None:
    """--attack: the legitimate client's figures alone and attacked, the guessers' answers
    (with the default configuration they end up throttled: 429), peak RSS per worker."""
    doc = _bench(tmp_path, "--attack", "--attack-configs", "throttled", "--repeat", "1", "--duration", "2")
    assert doc["target"].endswith("(attack)") and doc["runs"] == []
    (e,) = doc["attack"]
    assert e["config"] == "throttled"
    for phase in ("legit_alone", "legit_attacked"):
        assert e[phase]["ok"] > 0 and set(e[phase]["statuses"]) == {"200"}, e[phase]
    g = e["guessers"]
    assert g["clients"] == 16 and g["statuses"].get("429", 0) > 0 and "200" not in g["statuses"], g
    assert e["median_ratio"] == e["legit_attacked"]["p50_ms"] / e["legit_alone"]["p50_ms"]
    assert all(v > 0 for v in e["rss_mb_peak"].values()) and len(e["rss_mb_peak"]) >= 2
    target = next(t for t in doc["targets"] if t["name"].startswith("attack, throttled"))
    assert target["met"] in (True, False)
