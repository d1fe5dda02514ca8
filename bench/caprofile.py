"""The CA's own CPU per enrollment, whole and by step (issue 17).

    .venv/bin/python bench/caprofile.py [--runs 7] [--seconds 1.5] [--against REV]

What one ``estkit serve`` worker does for a kept-alive /simpleenroll between
reading the body and writing the response, without HTTP or TLS, one thread,
on a P-256 directory made by ``bench/fixture.make_dir``: HTTP Basic with the
password already verified (the cache), the PKCS#10 decoded and checked, the
policy sequence, the signature, the certificate and its audit row committed
(SQLite WAL, synchronous=FULL), the certs-only answer in base64.  It is
``bench/ceiling.ca_enroll_ms``'s loop.

``whole`` is CPU time (user + system, ``os.times``) over a timed loop with
nothing instrumented, the median of ``--runs`` runs.  The breakdown is a
separate instrumented loop: each step is wrapped with a CPU-time clock
(``time.process_time``; the wrapper's own cost, about a microsecond per step,
is in the step), ``other`` is what no wrapper covers (dataclasses, the
sequence itself); medians per step over the runs.  Parts cost more in a tight
loop together than alone (caches), so read the whole first.

``--against REV`` measures the same loop on the source of git revision REV as
well (``git archive`` into a temporary directory, put first on PYTHONPATH),
each run in a fresh process, the two alternating: the before/after figures of
a change, from one command.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fixture  # noqa: E402

# (label, module, attribute): what the breakdown times.  Module-level names are
# patched where the CA looks them up (estkit.ca.authority imports them by name).
_STEPS: tuple[tuple[str, str], ...] = (
    ("get_user", "store.get_user"),
    ("password_cache", "passwords.verify"),
    ("decode_pkcs10", "estkit.ca.bench_loop:decode_pkcs10"),
    ("validators", "validators"),
    ("authorize", "authorize"),
    ("shape_certificate", "estkit.ca.authority:shape_certificate"),
    ("sign", "signer.sign_certificate"),
    ("check_result", "estkit.ca.authority:check_result"),
    ("record_issued", "store.record_issued"),
    ("certs_only+b64", "estkit.ca.bench_loop:answer"),
)


def _setup(work: Path, n_csrs: int) -> tuple[Path, list[bytes]]:
    directory = fixture.make_dir(work / "d", "p256", workers=1)
    csr_file = fixture.write_csrs(work / "csrs.txt", n_csrs)
    return directory, [base64.b64decode(line) for line in csr_file.read_text().split()]


class _Loop:
    """The enrollment loop on a copy of ``directory`` (ceiling.ca_enroll_ms's)."""

    def __init__(self, directory: Path, csrs: list[bytes]) -> None:
        from estkit.ca.identity import RequestContext
        from estkit.cli.common import config_for
        from estkit.cli.wiring import build_authority, build_store
        from estkit.protocol.framing import encode_b64
        from estkit.protocol.pkcs7 import certs_only
        from estkit.protocol.request import decode_pkcs10

        self.copy = Path(tempfile.mkdtemp(prefix="caprofile-", dir=directory.parent)) / "d"
        shutil.copytree(directory, self.copy)
        self.store = build_store(config_for(str(self.copy)))
        self.ca = build_authority(config_for(str(self.copy)), self.store)
        self.csrs = csrs
        self.i = 0
        self.ctx_type = RequestContext
        self.decode_pkcs10 = decode_pkcs10
        self.answer: Callable[[Any], bytes] = lambda cert: encode_b64(certs_only([cert]))
        self.enroll()  # the one scrypt, remembered from here on as in a worker

    def enroll(self) -> None:
        self.i += 1
        ca = self.ca
        ctx = self.ctx_type(identity=ca.authenticate_user(fixture.BENCH_USER, fixture.BENCH_PASSWORD),
                            peer="127.0.0.1:1")
        cert = ca.simpleenroll(None, self.decode_pkcs10(self.csrs[self.i % len(self.csrs)]), ctx)
        self.answer(cert)

    def whole_ms(self, seconds: float) -> float:
        t0, n, cpu0 = time.perf_counter(), 0, os.times()
        while time.perf_counter() - t0 < seconds:
            self.enroll()
            n += 1
        cpu1 = os.times()
        return ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / n * 1000

    def instrument(self) -> dict[str, list[float]]:
        """Wrap every step of _STEPS with a CPU clock; returns the accumulator."""
        import importlib

        acc: dict[str, list[float]] = defaultdict(lambda: [0.0])

        def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            cell = acc[label]
            clock = time.process_time

            def wrapper(*a: Any, **k: Any) -> Any:
                t = clock()
                try:
                    return fn(*a, **k)
                finally:
                    cell[0] += clock() - t
            return wrapper

        for label, where in _STEPS:
            if where.startswith("estkit.ca.bench_loop:"):
                attr = where.split(":", 1)[1]
                setattr(self, attr, timed(label, getattr(self, attr)))
            elif ":" in where:
                mod, attr = where.split(":", 1)
                m = importlib.import_module(mod)
                setattr(m, attr, timed(label, getattr(m, attr)))
            elif where == "validators":
                self.ca.validators = tuple(timed(label, v) for v in self.ca.validators)
            elif where == "authorize":
                self.ca.authorize = timed(label, self.ca.authorize)  # type: ignore[assignment]
            elif where == "passwords.verify":
                pw = self.ca._passwords
                pw.verify = timed(label, pw.verify)  # type: ignore[method-assign]
            elif where == "store.get_user":
                self.store.get_user = timed(label, self.store.get_user)  # type: ignore[method-assign]
            elif where == "store.record_issued":
                self.store.record_issued = timed(label, self.store.record_issued)  # type: ignore[method-assign]
            elif where == "signer.sign_certificate":
                for issuing in self.ca.cas.values():
                    s = issuing.signer
                    object.__setattr__(issuing, "signer", _Wrapped(s, timed(label, s.sign_certificate)))
        return acc

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.copy.parent, ignore_errors=True)


class _Wrapped:
    """A signer whose sign_certificate is timed (IssuingCA is frozen)."""

    def __init__(self, inner: Any, sign: Callable[..., Any]) -> None:
        self._inner = inner
        self.sign_certificate = sign

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _child(directory: Path, csr_file: Path, seconds: float, breakdown: bool) -> None:
    """One run in this process: prints one JSON line."""
    csrs = [base64.b64decode(line) for line in csr_file.read_text().split()]
    loop = _Loop(directory, csrs)
    try:
        out: dict[str, Any] = {"whole_ms": loop.whole_ms(seconds)}
        if breakdown:
            acc = loop.instrument()
            n0 = loop.i
            t0, cpu0 = time.perf_counter(), os.times()
            while time.perf_counter() - t0 < seconds:
                loop.enroll()
            cpu1 = os.times()
            n = loop.i - n0
            total = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / n * 1e6
            steps = {label: acc[label][0] / n * 1e6 for label, _ in _STEPS}
            steps["other"] = total - sum(steps.values())
            out["steps_us"] = steps
            out["instrumented_us"] = total
    finally:
        loop.close()
    print(json.dumps(out), flush=True)


def _run(src: Path | None, directory: Path, csr_file: Path, seconds: float, breakdown: bool) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, __file__, "--child", str(directory), str(csr_file), "--seconds", str(seconds)]
    if breakdown:
        args.append("--breakdown")
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _export(rev: str, into: Path) -> Path:
    """The ``src`` tree of git revision ``rev`` under ``into``."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True,
                          check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=root, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="runs per source tree (default 7)")
    ap.add_argument("--seconds", type=float, default=1.5, help="seconds per timed loop (default 1.5)")
    ap.add_argument("--csrs", type=int, default=200, help="distinct CSRs the loop rotates (default 200)")
    ap.add_argument("--against", metavar="REV", help="also measure git revision REV, alternating runs")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--child", nargs=2, metavar=("DIR", "CSRS"), help=argparse.SUPPRESS)
    ap.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(Path(a.child[0]), Path(a.child[1]), a.seconds, a.breakdown)
        return 0
    with tempfile.TemporaryDirectory(prefix="caprofile-") as tmp:
        work = Path(tmp)
        directory, _ = _setup(work, a.csrs)
        csr_file = work / "csrs.txt"
        trees: dict[str, Path | None] = {"this tree": None}
        if a.against:
            (work / "against").mkdir()
            trees = {a.against: _export(a.against, work / "against"), "this tree": None}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for _ in range(a.runs):
            for name, src in trees.items():  # alternating, so drift of the machine hits both
                results[name].append(_run(src, directory, csr_file, a.seconds, breakdown=True))
    summary = {}
    for name, runs in results.items():
        wholes = [r["whole_ms"] for r in runs]
        labels = list(runs[0]["steps_us"])
        summary[name] = {"whole_ms_median": statistics.median(wholes), "whole_ms_runs": wholes,
                         "instrumented_us_median": statistics.median(r["instrumented_us"] for r in runs),
                         "steps_us_median": {k: statistics.median(r["steps_us"][k] for r in runs) for k in labels}}
    if a.json:
        print(json.dumps(summary, indent=2))
        return 0
    names = list(summary)
    print(f"CA's own CPU per enrollment, one thread, P-256 CA, {a.runs} runs x {a.seconds}s each, medians "
          f"(python {sys.version.split()[0]})")
    print(f"{'':22}" + "".join(f"{n:>14}" for n in names))
    print(f"{'whole (ms)':22}" + "".join(f"{summary[n]['whole_ms_median']:14.3f}" for n in names))
    print(f"{'instrumented (µs)':22}" + "".join(f"{summary[n]['instrumented_us_median']:14.0f}" for n in names))
    for label in summary[names[0]]["steps_us_median"]:
        print(f"  {label:20}" + "".join(f"{summary[n]['steps_us_median'].get(label, float('nan')):14.0f}"
                                        for n in names))
    for n in names:
        print(f"runs {n}: " + " ".join(f"{w:.3f}" for w in summary[n]["whole_ms_runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
