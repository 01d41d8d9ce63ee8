"""The SDK's Prometheus metrics, on a registry the service injects.

Base units (seconds, records); labels are bounded — service, entity type, action,
status, DLQ reason — never entity or event ids.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ConsumerMetrics", "observe_many"]

_HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ConsumerMetrics:
    """Every metric of one consumer; one instance per registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.handled = Counter(
            "retention_consumer_events_handled",
            "Events acknowledged, by the status of the ack sent.",
            ["service", "entity_type", "action", "status"],
            registry=r,
        )
        self.failed = Counter(
            "retention_consumer_events_failed",
            "Events that failed after their last attempt (acked `failed`, sent to the DLQ).",
            ["service", "entity_type", "action"],
            registry=r,
        )
        self.retried = Counter(
            "retention_consumer_handler_retries",
            "Handler attempts that failed and were retried.",
            ["service", "entity_type", "action"],
            registry=r,
        )
        self.abandoned = Counter(
            "retention_consumer_handlers_abandoned",
            "Handler calls that ignored their cancellation after a timeout and were left "
            "running (their connection discarded, the event failed).",
            ["service", "entity_type", "action"],
            registry=r,
        )
        self.duplicates = Counter(
            "retention_consumer_events_redelivered",
            "Events already processed, acked again without calling the handler.",
            ["service", "entity_type", "action"],
            registry=r,
        )
        self.skipped = Counter(
            "retention_consumer_events_skipped",
            "Events for entity types or actions this service does not handle (no ack).",
            ["service"],
            registry=r,
        )
        self.handler_duration = Histogram(
            "retention_consumer_handler_duration_seconds",
            "Duration of one handler attempt, transaction included.",
            ["service", "entity_type", "action"],
            buckets=_HANDLER_BUCKETS,
            registry=r,
        )
        self.dead_lettered = Counter(
            "retention_consumer_dead_lettered",
            "Records sent to the DLQ, by reason (poison | failed | bad_signature).",
            ["service", "reason"],
            registry=r,
        )
        self.unsigned = Counter(
            "retention_unsigned_records",
            "Unsigned records accepted under RETENTION_SIGNATURES=permissive.",
            ["service", "topic"],
            registry=r,
        )
        self.holds_rejected = Counter(
            "retention_consumer_hold_records_rejected",
            "Holds-topic records ignored: a failed signature or not a hold set (by reason).",
            ["service", "reason"],
            registry=r,
        )
        self.held = Gauge(
            "retention_consumer_held_entities",
            "Entities held on the holds topic, as this consumer last read it.",
            ["service"],
            registry=r,
        )
        self.lag = Gauge(
            "retention_consumer_lag_records",
            "Records on assigned partitions not yet processed (from the fetch high-water mark).",
            ["service"],
            registry=r,
        )


def observe_many(histogram: Any, value: float, count: int) -> None:
    """`histogram.observe(value)` `count` times (a labelled child, without exemplars).

    A batch handler's call is `count` observations of one value, one per event: a
    loop of `observe` cost ~0.5 µs an event. prometheus_client has no call for it, so
    this adds to the child's sum and to the one bucket `observe` would pick (the first
    whose bound is ≥ `value`); a client without those internals gets the loop.
    tests/sdk/test_metrics.py compares both.
    """
    bounds, buckets, total = (
        getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum")
    )
    if (
        bounds is None
        or buckets is None
        or total is None
        or len(bounds) != len(buckets)
        # NaN (no bucket at all for `observe`): not something a duration is, but exact.
        or not value <= bounds[-1]
    ):
        for _ in range(count):
            histogram.observe(value)
        return
    if count > 0:
        total.inc(value * count)
        buckets[bisect_left(bounds, value)].inc(count)
