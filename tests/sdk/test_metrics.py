"""`observe_many` leaves a histogram exactly as that many `observe` calls would."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from consumer_sdk.metrics import observe_many

BOUNDS = (0.001, 0.01, 0.1, 1.0, 10.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    metrics: list[Metric] = list(registry.collect())
    return {
        (s.name, s.labels.get("le", "")): s.value
        for m in metrics
        for s in m.samples
        if not s.name.endswith("_created")
    }


def histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    return (
        one,
        Histogram("d", "d", ["a"], buckets=BOUNDS, registry=one),
        many,
        Histogram("d", "d", ["a"], buckets=BOUNDS, registry=many),
    )


def test_many_observations_at_once_are_that_many_observations() -> None:
    one, looped, many, batched = histograms()
    # On and around every bound, below the first, past the last, zero, negative.
    values = [b * f for b in BOUNDS for f in (0.5, 1.0, 1.0000001)] + [0.0, -1.0, 50.0, 1e-9]
    loop_child, batch_child = looped.labels("x"), batched.labels("x")
    for n, value in enumerate(values):
        count = n % 7
        for _ in range(count):
            loop_child.observe(value)
        observe_many(batch_child, value, count)
        got, want = samples(many), samples(one)
        assert got.keys() == want.keys()
        for key in want:
            assert math.isclose(got[key], want[key], rel_tol=1e-12, abs_tol=1e-12), (key, value)


def test_nan_goes_to_no_bucket_as_with_observe() -> None:
    one, looped, many, batched = histograms()
    for _ in range(3):
        looped.labels("x").observe(math.nan)
    observe_many(batched.labels("x"), math.nan, 3)
    got, want = samples(many), samples(one)
    assert {k: v for k, v in got.items() if k[0] != "d_sum"} == {
        k: v for k, v in want.items() if k[0] != "d_sum"
    }
    assert math.isnan(got[("d_sum", "")])
    assert math.isnan(want[("d_sum", "")])
