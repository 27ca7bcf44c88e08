"""What a server counts, for ``GET /metrics`` (Prometheus text format, prometheus-client).

The counts come from the server's own events, not from counters spread through
the code: every store, whatever its door (C-STORE, STOW-RS) and its status, from
the one store service (:attr:`StoreService.observers
<dicomstore.services.storage.StoreService.observers>`); every association from
the record the acceptor writes for the audit trail (:meth:`ServerMetrics.audit`
passes each record on to the real audit log, if any); open associations read
from the server when scraped; HTTP requests from a middleware
(:mod:`dicomstore.http.operations`). Metric names (README: "Metrics"):

``dicomstore_instances_stored_total{service}``
    instances stored (Success or Warning), by door;
``dicomstore_stored_bytes_total{service}``
    bytes of the data sets stored;
``dicomstore_store_status_total{service,status}``
    every store answered, by status code (``0000``, ``B007``, ``A700``, ``0124`` ...);
``dicomstore_store_duration_seconds{service}``
    histogram: from the store's beginning (C-STORE request, STOW-RS part) to its answer;
``dicomstore_associations_open``
    connections being served now;
``dicomstore_associations_total{outcome}``
    associations ended: ``released``, ``aborted``, ``rejected`` (refused), ``closed``
    (the connection ended without A-RELEASE or A-ABORT);
``dicomstore_http_requests_total{method,status}``
    HTTP requests answered, by status (401 and 403 included);
``dicomstore_forward_pending{destination}``
    instances queued for a forwarding destination, not yet sent (read when scraped);
``dicomstore_forward_oldest_pending_seconds{destination}``
    how long the oldest of them has waited (0: none);
``dicomstore_forwarded_total{destination,outcome}``
    forwarding attempts by outcome: ``sent``, ``failed`` (given up: a permanent
    failure status), ``skipped`` (no longer in the archive), ``retry`` (a
    transient failure: tried again later), from each batch's report;
``dicomstore_forward_errors_total{destination}``
    batches cut short by a transient failure (refused connection, rejected or
    aborted association, timeout);
``dicomstore_archive_{instances,batches,flushes,flushed_before}_total``
    the archive's group commit (``commit.CommitStats``, read when scraped);
``dicomstore_archive_free_bytes``
    free bytes of the archive's file system (read when scraped: ``statvfs``);
``dicomstore_ready``
    1 when this node can store (``/readyz`` answers ``ready``), else 0: judged at
    each ``/readyz`` and each scrape (``readiness.py``; review58 M2);
``dicomstore_audit_write_errors_total``
    failed writes of the audit log (each batch that failed, retried later).

With ``serve --workers``, the first process's /metrics adds up every process's
(:meth:`ServerMetrics.gathered`, :func:`merge`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dicomstore.services.admission import AuditSink
from dicomstore.services.readiness import Readiness
from dicomstore.services.storage import StoreResult, Storing, free_bytes

if TYPE_CHECKING:
    from dicomstore.services.forward_settling import BatchReport

__all__ = ["CONTENT_TYPE", "ServerMetrics", "merge"]

log = logging.getLogger("dicomstore.server")

#: seconds: a small instance on a fast disk to a large one over a slow link
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OUTCOMES = ("released", "aborted", "rejected", "closed")
#: The HTTP methods counted by name; any other is counted as ``other`` (a client chooses
#: the method: one label value per made-up method would grow without bound).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class _Served(Protocol):
    """What :meth:`ServerMetrics.watch` needs of a :class:`~dicomstore.services.server.Server`."""

    store: Any
    associations: Any


class ServerMetrics:
    """The counters of one server, in a registry of their own (several servers in one
    process, as in the tests, each count their own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances = Counter(
            "dicomstore_instances_stored", "Instances stored", ["service"], registry=r
        )
        self.bytes = Counter(
            "dicomstore_stored_bytes", "Bytes of the data sets stored", ["service"], registry=r
        )
        self.statuses = Counter(
            "dicomstore_store_status",
            "Stores answered, by status code (PS3.4 B.2.3)",
            ["service", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dicomstore_store_duration_seconds",
            "Seconds from a store's beginning to its answer",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.open = Gauge(
            "dicomstore_associations_open", "Connections being served now", registry=r
        )
        self.associations = Counter(
            "dicomstore_associations",
            "Associations ended, by outcome (rejected: refused)",
            ["outcome"],
            registry=r,
        )
        self.http = Counter(
            "dicomstore_http_requests",
            "HTTP requests answered, by method and status",
            ["method", "status"],
            registry=r,
        )
        self.forward_pending = Gauge(
            "dicomstore_forward_pending",
            "Instances queued for a forwarding destination, not yet sent",
            ["destination"],
            registry=r,
        )
        self.forward_oldest = Gauge(
            "dicomstore_forward_oldest_pending_seconds",
            "Seconds the oldest instance queued for a destination has waited",
            ["destination"],
            registry=r,
        )
        self.forwarded = Counter(
            "dicomstore_forwarded",
            "Forwarding attempts, by outcome (sent, failed, skipped, retry)",
            ["destination", "outcome"],
            registry=r,
        )
        self.forward_errors = Counter(
            "dicomstore_forward_errors",
            "Forwarding batches cut short by a transient failure",
            ["destination"],
            registry=r,
        )
        #: readiness, judged again before each scrape (:meth:`watch_readiness`)
        self.readiness: Readiness | None = None
        #: the other processes of ``serve --workers``: each gives its exposition,
        #: or None when it cannot now (:meth:`gathered` adds them up)
        self.others: list[Callable[[], Awaitable[bytes | None]]] = []

    def watch(self, server: _Served) -> None:
        """Count ``server``'s stores (its store service, every door) and read its
        open associations at each scrape."""
        server.store.observers.append(self.stored)
        self.open.set_function(lambda: len(server.associations))
        forwarding = getattr(server, "forwarding", None)
        if forwarding is not None:
            forwarding.observers.append(self.forward_batch)
            for ae, peer in forwarding.peers.items():
                self.forward_pending.labels(ae).set_function(_pending_count(peer))
                self.forward_oldest.labels(ae).set_function(_oldest_age(peer))

    def watch_archive(self, archive: Any) -> None:
        """Read the archive's group-commit counters at each scrape (``archive.stats``,
        ``commit.CommitStats``): batches, instances, flushes (fsync and syncfs calls;
        their ratio to instances is the flushes per instance), batches flushed before."""
        self.registry.register(_ArchiveCollector(archive))

    def watch_readiness(self, readiness: Readiness, root: Any) -> None:
        """``dicomstore_ready`` from each of ``readiness``'s judgements (one made before
        each scrape too), and the free bytes of the archive at ``root``, read when
        scraped. Only in the process serving HTTP (``--workers``' others would add
        theirs up: :func:`merge`)."""
        r = self.registry
        free = Gauge(
            "dicomstore_archive_free_bytes", "Free bytes of the archive's file system", registry=r
        )
        free.set_function(lambda: float(free_bytes(root)))
        ready = Gauge(
            "dicomstore_ready", "1 when this node can store (/readyz), else 0", registry=r
        )
        readiness.observers.append(lambda problems: ready.set(0 if problems else 1))
        self.readiness = readiness

    def audit(self, inner: AuditSink | None) -> AuditSink:
        """An audit sink that counts each association's outcome, then hands every
        record to ``inner`` (the real audit log; None: none); the audit log's failed
        writes counted (``AuditLog.write_errors``) when it has them."""
        if inner is not None and hasattr(inner, "write_errors"):
            self.registry.register(_AuditErrors(inner))
        return _CountingAudit(self, inner)

    def stored(self, storing: Storing, result: StoreResult) -> None:
        """One store answered (:attr:`StoreService.observers`)."""
        service = storing.caller.service
        self.statuses.labels(service, f"{result.status:04X}").inc()
        self.latency.labels(service).observe(max(time.monotonic() - storing.started, 0.0))
        if result.stored:
            self.instances.labels(service).inc()
            self.bytes.labels(service).inc(storing.nbytes)

    def forward_batch(self, report: BatchReport) -> None:
        """One forwarding batch done (``Forwarding.observers``)."""
        ae = report.destination.ae_title
        for outcome in ("sent", "failed", "skipped", "retry"):
            n = getattr(report, outcome)
            if n:
                self.forwarded.labels(ae, outcome).inc(n)
        if report.error is not None:
            self.forward_errors.labels(ae).inc()

    def association_ended(self, outcome: str) -> None:
        """One association ended with the acceptor's ``outcome`` text."""
        word = outcome.split(":", 1)[0].split(" ", 1)[0]
        self.associations.labels(word if word in OUTCOMES else "closed").inc()

    def request(self, method: str, status: int) -> None:
        """One HTTP request answered (0: the client left before an answer); a method
        not in :data:`HTTP_METHODS` as ``other``."""
        self.http.labels(method if method in HTTP_METHODS else "other", str(status)).inc()

    def exposition(self) -> bytes:
        """The text format (``CONTENT_TYPE``) of every metric now (this process's)."""
        return generate_latest(self.registry)

    async def gathered(self) -> bytes:
        """:meth:`exposition` with the :attr:`others`' added up (:func:`merge`): the
        whole server's counts, whichever process served what."""
        if self.readiness is not None:
            await self.readiness.problems()  # (dicomstore_ready: judged now)
        if not self.others:
            return self.exposition()
        texts = [self.exposition()]
        for got in await asyncio.gather(*(other() for other in self.others)):
            if got is not None:
                texts.append(got)
        return merge(texts)


def merge(texts: list[bytes]) -> bytes:
    """One exposition of several (each process of ``serve --workers``): every sample
    summed over them by name and labels (counters, histograms, gauges such as the
    open associations), but a ``_created`` time the earliest."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    labels: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                sums[family.name] = {}
            values = sums[family.name]
            earliest = family.name.endswith("_created")
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                labels.setdefault(key, sample.labels)
                old = values.get(key)
                if old is None:
                    values[key] = sample.value
                else:
                    values[key] = min(old, sample.value) if earliest else old + sample.value
    for name, family in families.items():
        for key, value in sums[name].items():
            family.add_sample(key[0], labels[key], value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector of metric families already made (:func:`merge`)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        return iter(self.families)


def _pending_count(peer: Any) -> Callable[[], float]:
    return lambda: float(peer.pending.count)


def _oldest_age(peer: Any) -> Callable[[], float]:
    return lambda: time.time() - peer.pending.oldest if peer.pending.oldest else 0.0


class _CountingAudit:
    def __init__(self, metrics: ServerMetrics, inner: AuditSink | None) -> None:
        self.metrics = metrics
        self.inner = inner

    def association(self, record: dict[str, Any]) -> None:
        self.metrics.association_ended(str(record.get("outcome", "")))
        if self.inner is not None:
            self.inner.association(record)

    def instance(self, record: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.instance(record)

    def query(self, record: dict[str, Any]) -> None:
        query = getattr(self.inner, "query", None)
        if query is not None:
            query(record)

    def retrieve(self, record: dict[str, Any]) -> None:
        retrieve = getattr(self.inner, "retrieve", None)
        if retrieve is not None:
            retrieve(record)


class _ArchiveCollector:
    """The archive's ``CommitStats`` as counters, read when scraped."""

    HELP = {
        "batches": "Batches the group commit published",
        "instances": "Instances the group commit published",
        "flushes": "Flushes (fsync, syncfs) the archive made; SQLite's own are not counted",
        "flushed_before": "Batches an earlier flush had made durable already",
    }

    def __init__(self, archive: Any) -> None:
        self.archive = archive

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        counts = self.archive.stats.snapshot()
        for key, text in self.HELP.items():
            family = CounterMetricFamily(f"dicomstore_archive_{key}", text)
            family.add_metric([], counts[key])
            yield family


class _AuditErrors:
    """The audit log's failed writes (``AuditLog.write_errors``), read when scraped."""

    def __init__(self, audit: Any) -> None:
        self.audit = audit

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "dicomstore_audit_write_errors", "Failed writes of the audit log (retried)"
        )
        family.add_metric([], self.audit.write_errors)
        yield family
