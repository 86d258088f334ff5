"""Prometheus metrics of the worker, on a registry of its own per run.

A supervised child (``chatstore worker --processes N``) runs with
``PROMETHEUS_MULTIPROC_DIR`` set by its supervisor, so prometheus-client
writes these values to files there, and the supervisor serves their sum.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Everything the worker measures; one instance per worker run."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "chatstore_events",
            "Events handled, by outcome (inserted, duplicate, archived, dead_lettered) "
            "and dead-letter reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "chatstore_batch_size",
            "Deliveries per flushed batch.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=self.registry,
        )
        self.flush_seconds = Histogram(
            "chatstore_flush_seconds",
            "Time from a batch's close to its acknowledgement (write, commit, DLQ, ack).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lag_seconds = Histogram(
            "chatstore_publish_to_commit_seconds",
            "From an event's occurred_at to the commit that stored it.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "chatstore_retries",
            "Batch writes retried after a transient failure, by SQLSTATE ('none' without one).",
            ["sqlstate"],
            registry=self.registry,
        )
        # In a supervised child (multiprocess mode) each live child writes its
        # own value, labelled with its pid: the supervisor needs them one by one
        # to answer /readyz, and serves their conjunction as chatstore_ready.
        # Outside multiprocess mode the mode is ignored.
        self.ready = Gauge(
            "chatstore_ready",
            "1 while connected to both servers and writing; 0 while retrying or reconnecting "
            "(under a supervisor: 1 only while every child is).",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
