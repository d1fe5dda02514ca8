"""Prometheus metrics (``[server] metrics_listen``), summed over every worker process.

Counters and the request histogram live in prometheus-client's multiprocess
mode: each worker writes its own files in a private directory the parent
creates (:func:`prepare_multiproc_dir`), and a scrape, whichever worker
accepts it, adds up the files of all workers, dead ones included (a counter
never goes back).  Gauges are not kept per worker: they describe the CA, the
TLS certificate and the store, so the worker serving the scrape reads them
then (:class:`StateCollector`).

Label values come from a closed set (the configured labels and EST
operations, status codes, a few failure kinds): a peer choosing the path must
not create series.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric

from estkit.ca.authority import CertificateAuthority
from estkit.ca.ports import PendingStatus
from estkit.server.transport import server_header

__all__ = ["EstMetrics", "StateCollector", "metrics_app", "prepare_multiproc_dir", "remove_multiproc_dir",
           "worker_exited", "METRICS_PATH"]

log = logging.getLogger("estkit.server")

METRICS_PATH = "/metrics"
_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Request latency buckets: a GET answers in about a millisecond, an enrollment
# signs (ms) and writes the store (ms to s when PostgreSQL is remote or busy).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OTHER = "other"


def prepare_multiproc_dir(path: Path) -> Path:
    """Create ``path`` empty with mode 0700 (files of an earlier run removed) and
    switch prometheus-client to multiprocess mode there.  Call in the parent,
    before the first metric exists and before forking."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    os.chmod(path, 0o700)  # whatever the umask
    os.environ[_ENV] = str(path)
    # The value class is chosen when prometheus_client.values is imported; pick it
    # again now that the directory is set, whatever imported it before.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def remove_multiproc_dir(path: Path) -> None:
    """Remove the directory at exit (its counts die with the server)."""
    shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """A worker was reaped: its live-gauge files go (its counters stay in the sum)."""
    if os.environ.get(_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class EstMetrics:
    """The counters and the histogram every worker updates."""

    def __init__(self, operations: Iterable[str], labels: Iterable[str]) -> None:
        self.operations = frozenset(operations)
        self.labels = frozenset(labels)
        # registry=None: a scrape collects from the multiprocess files, not from these objects.
        self.requests = Counter("estkit_requests", "Requests answered, by operation, CA label and HTTP status.",
                                ["operation", "label", "status"], registry=None)
        self.duration = Histogram("estkit_request_duration_seconds", "Time to answer a request, by operation.",
                                  ["operation"], buckets=_BUCKETS, registry=None)
        self.issued_total = Counter("estkit_certificates_issued", "Certificates issued, by CA label.",
                                    ["label"], registry=None)
        self.auth_failures = Counter("estkit_auth_failures",
                                     "Failed authentications: password, certificate, throttled or other.",
                                     ["reason"], registry=None)

    def request(self, operation: str, label: str, status: int, seconds: float) -> None:
        """Count one answered request (the access-log hook of estkit.server.app)."""
        op = operation if operation in self.operations else OTHER
        lab = label if label in self.labels or label == "" else OTHER
        with _never_raise():
            self.requests.labels(op, lab, str(status)).inc()
            self.duration.labels(op).observe(seconds)

    def issued(self, label: str) -> None:
        """Count one certificate recorded as issued (the CA's ``on_issued`` hook)."""
        with _never_raise():
            self.issued_total.labels(label if label in self.labels else OTHER).inc()

    def auth_failure(self, reason: str) -> None:
        """Count one failed authentication (estkit.server.authaudit kinds)."""
        with _never_raise():
            self.auth_failures.labels(reason).inc()


@contextmanager
def _never_raise() -> Iterator[None]:
    """Counting must not fail a request (or an issuance already recorded): a
    full disk under the metrics files loses counts, logged, not answers."""
    try:
        yield
    except Exception:
        log.exception("metrics: cannot count")


class StateCollector:
    """Gauges read at scrape time: certificate expiry, CRL nextUpdate, pending requests."""

    def __init__(self, ca: CertificateAuthority, tls_not_after: datetime | None) -> None:
        self.ca = ca
        self.tls_not_after = tls_not_after

    def collect(self) -> Iterator[Metric]:
        """The gauges (blocking: reads the store).  A store that fails leaves its
        gauges out of this scrape rather than failing it."""
        ca_exp = GaugeMetricFamily("estkit_ca_not_after_timestamp_seconds",
                                   "notAfter of each issuing CA certificate (Unix time).", labels=["ca"])
        for name, issuing in self.ca.cas.items():
            ca_exp.add_metric([name], issuing.cert.not_valid_after_utc.timestamp())
        yield ca_exp
        if self.tls_not_after is not None:
            yield GaugeMetricFamily("estkit_tls_not_after_timestamp_seconds",
                                    "notAfter of the TLS server certificate (Unix time).",
                                    value=self.tls_not_after.timestamp())
        store = self.ca.store
        try:
            crl = GaugeMetricFamily("estkit_crl_next_update_timestamp_seconds",
                                    "nextUpdate of each CA's current CRL in the store (Unix time).", labels=["ca"])
            for name in self.ca.cas:
                rec = store.get_crl(name)
                if rec is not None:
                    crl.add_metric([name], rec.next_update.timestamp())
            pending = len(store.list_pending(PendingStatus.PENDING))
        except Exception as exc:  # the scrape still answers; /readyz names the store
            log.warning("metrics: cannot read the store: %s", exc)
            return
        yield crl
        yield GaugeMetricFamily("estkit_pending_requests", "Requests waiting for manual approval.", value=pending)


def render(state: StateCollector) -> bytes:
    """One scrape: every worker's counters plus the state gauges."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(state)
    return generate_latest(registry)


def metrics_app(state: StateCollector, *, read: Callable[[StateCollector], bytes] = render) -> web.Application:
    """The plain-HTTP metrics application (``GET /metrics``), one per worker."""

    async def get_metrics(_request: web.Request) -> web.StreamResponse:
        body = await asyncio.get_running_loop().run_in_executor(None, read, state)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.on_response_prepare.append(server_header)
    app.router.add_get(METRICS_PATH, get_metrics)
    return app
