"""Set-based handlers (`on_delete_batch` / `on_anonymize_batch`): registration, one call
per group of a partition batch, and isolation of a culprit when a call raises."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from consumer_sdk import (
    AckStatus,
    ConfigurationError,
    ConsumerSettings,
    DuplicateHandlerError,
    EntityNotFound,
    EventType,
    PermanentFailure,
    RetentionConsumer,
    RetentionEvent,
    RetryLater,
)
from consumer_sdk._internal.trust import Trust
from consumer_sdk.idempotency import (
    BatchingStore,
    BatchTransaction,
    InMemoryIdempotencyStore,
    LookupInBatch,
    ProcessedEvent,
    StoreTransaction,
)
from consumer_sdk.testing import TestConsumer
from schemas.dlq import DlqReason
from tests.sdk.helpers import event


def make_app() -> RetentionConsumer:
    return RetentionConsumer("svc", settings=ConsumerSettings(max_attempts=3, database_url=None))


def statuses(acks: Sequence[object]) -> list[tuple[str, AckStatus, int]]:
    return [(a.entity_id, a.status, a.records_affected) for a in acks]  # type: ignore[attr-defined]


def test_registration_returns_the_function_and_marks_it_batch() -> None:
    app = make_app()

    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        return [1 for _ in events]

    assert app.on_delete_batch("user")(delete_users) is delete_users
    spec = app.handlers.get("user", EventType.DELETE)
    assert spec is not None
    assert spec.batch
    assert spec.func is delete_users
    assert [h.actions for h in app.registration().handles] == [[EventType.DELETE]]


@pytest.mark.parametrize("batch_first", [True, False])
def test_single_and_batch_handler_for_one_pair_is_a_duplicate(batch_first: bool) -> None:
    app = make_app()

    async def single(event: RetentionEvent) -> int:
        return 1

    async def batch(events: Sequence[RetentionEvent]) -> list[int]:
        return [1 for _ in events]

    first, second = (
        (app.on_anonymize_batch("user"), app.on_anonymize("user"))
        if batch_first
        else (app.on_anonymize("user"), app.on_anonymize_batch("user"))
    )
    first(batch if batch_first else single)  # type: ignore[arg-type]
    with pytest.raises(DuplicateHandlerError, match="already handled"):
        second(single if batch_first else batch)  # type: ignore[arg-type]


def test_a_sync_batch_handler_is_refused_naming_the_decorator() -> None:
    app = make_app()

    def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        return []

    with pytest.raises(ConfigurationError, match=r"@on_delete_batch\('user'\)"):
        app.on_delete_batch("user")(delete_users)  # type: ignore[type-var]


async def test_one_call_for_the_batch_with_per_event_results() -> None:
    app = make_app()

    @app.on_delete_batch("user")
    async def delete_users(
        events: Sequence[RetentionEvent],
    ) -> Mapping[uuid.UUID, int | EntityNotFound]:
        return {
            e.event_id: EntityNotFound("gone") if e.entity_id == "x" else int(e.entity_id)
            for e in events
        }

    events = [event("1"), event("x"), event("3")]
    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(*events)
        again = await t.deliver_batch(*events)
        t.mock(delete_users).assert_called_once_with(events)
    assert statuses(acks) == [
        ("1", AckStatus.COMPLETED, 1),
        ("x", AckStatus.NOT_FOUND, 0),
        ("3", AckStatus.COMPLETED, 3),
    ]
    assert acks[1].detail == "EntityNotFound"  # its text only on opt-in
    assert statuses(again) == statuses(acks)
    assert all("redelivered" in a.detail for a in again)
    handled = app.metrics.registry.get_sample_value(
        "retention_consumer_handler_duration_seconds_count",
        {"service": "svc", "entity_type": "user", "action": "delete"},
    )
    assert handled == 3  # one observation per event, the call's time shared


async def test_a_call_never_holds_two_events_of_one_entity_or_another_handler() -> None:
    app = make_app()
    calls: list[list[str]] = []

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        calls.append([e.entity_id for e in events])
        return [1 for _ in events]

    @app.on_delete("order")
    async def delete_order(event: RetentionEvent) -> int:
        calls.append([f"order {event.entity_id}"])
        return 1

    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(
            event("a"), event("b"), event("a"), event("o", entity_type="order"), event("c")
        )
    assert calls == [["a", "b"], ["a"], ["order o"], ["c"]]
    assert [a.entity_id for a in acks] == ["a", "b", "a", "o", "c"]


async def test_a_call_passes_over_events_no_handler_of_the_service_takes() -> None:
    app = make_app()
    calls: list[list[str]] = []

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        calls.append([e.entity_id for e in events])
        if any(e.entity_id == "bad" for e in events):
            raise PermanentFailure("bad row")
        return [1 for _ in events]

    other = [event("o1", entity_type="order"), event("o2", entity_type="order")]
    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(event("a"), other[0], event("b"), other[1], event("a"))
        assert t.skipped == other
        # A failing call: its events and the ones passed over with them, one by one.
        again = await t.deliver_batch(event("c"), other[0], event("bad"), event("d"))
    # A second event of an entity still waits for the next call.
    assert calls == [["a", "b"], ["a"], ["c", "bad", "d"], ["c"], ["bad"], ["d"]]
    assert [a.entity_id for a in acks] == ["a", "b", "a"]
    assert statuses(again) == [
        ("c", AckStatus.COMPLETED, 1),
        ("bad", AckStatus.FAILED, 0),
        ("d", AckStatus.COMPLETED, 1),
    ]
    skipped = app.metrics.registry.get_sample_value(
        "retention_consumer_events_skipped_total", {"service": "svc"}
    )
    assert skipped == 3


class _FirstCommitFails(InMemoryIdempotencyStore):
    """The first batch transaction fails at its commit, as when the database goes."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    @asynccontextmanager
    async def batch(self, service: str) -> AsyncIterator[BatchTransaction]:
        async with super().batch(service) as batch:
            yield batch
            if not self.failed:
                self.failed = True
                raise ConnectionError("commit failed")


async def test_an_event_passed_over_is_counted_once_when_its_run_is_redone() -> None:
    """A run whose commit fails is redone event by event: its passed-over event is
    skipped once, not once per attempt."""
    app = make_app()

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        return [1 for _ in events]

    store = _FirstCommitFails()
    async with TestConsumer(app, store=store) as t:
        acks = await t.deliver_batch(event("a"), event("o", entity_type="order"), event("b"))
    assert store.failed
    assert statuses(acks) == [("a", AckStatus.COMPLETED, 1), ("b", AckStatus.COMPLETED, 1)]
    skipped = app.metrics.registry.get_sample_value(
        "retention_consumer_events_skipped_total", {"service": "svc"}
    )
    assert skipped == 1


async def test_a_refused_signature_ends_a_call_that_passes_over_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record refused for its signature is never passed over like another service's
    event, whatever entity type it claims: it ends the call and is dead-lettered in
    record order."""
    monkeypatch.setattr(
        Trust, "refused", lambda self, record: "bad_signature" if b"forged" in record.key else None
    )
    app = make_app()
    calls: list[list[str]] = []

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        calls.append([e.entity_id for e in events])
        return [1 for _ in events]

    order = [event(f"o{n}", entity_type="order") for n in range(3)]
    forged = [event("forged"), event("forged", entity_type="order")]
    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(
            event("a"), order[0], forged[0], order[1], event("b"), forged[1], order[2], event("c")
        )
    assert calls == [["a"], ["b"], ["c"]]
    assert [a.entity_id for a in acks] == ["a", "b", "c"]
    assert [(d.key, d.reason) for d in t.dead_letters] == [
        (b"user:forged", DlqReason.BAD_SIGNATURE),
        (b"order:forged", DlqReason.BAD_SIGNATURE),
    ]


@pytest.mark.parametrize(
    ("signal", "attempts"), [(PermanentFailure("bad row"), 1), (RetryLater("locked"), 3)]
)
async def test_a_raising_call_isolates_the_culprit_and_spares_its_neighbours(
    signal: Exception, attempts: int
) -> None:
    app = make_app()
    calls: list[list[str]] = []

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        calls.append([e.entity_id for e in events])
        if any(e.entity_id == "bad" for e in events):
            raise signal
        return [2 for _ in events]

    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(event("a"), event("bad"), event("b"), event("c"))
        [letter] = t.dead_letters
    assert statuses(acks) == [
        ("a", AckStatus.COMPLETED, 2),
        ("bad", AckStatus.FAILED, 0),
        ("b", AckStatus.COMPLETED, 2),
        ("c", AckStatus.COMPLETED, 2),
    ]
    assert acks[1].attempt == attempts
    assert letter.headers["retention.dlq.attempts"] == str(attempts)
    # The whole group once, then one by one; a retried culprit ends the run, and the
    # events behind it go on as a batch again.
    expected_tail = [["b", "c"]] if attempts > 1 else [["b"], ["c"]]
    assert calls == [["a", "bad", "b", "c"], ["a"], *[["bad"]] * attempts, *expected_tail]


async def test_a_malformed_result_fails_only_the_events_it_cannot_vouch_for() -> None:
    app = make_app()

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        return [1] if len(events) > 1 or events[0].entity_id == "a" else [-1]

    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(event("a"), event("b"))
    assert statuses(acks) == [("a", AckStatus.COMPLETED, 1), ("b", AckStatus.FAILED, 0)]
    assert acks[1].detail == "PermanentFailure"


async def test_single_delivery_calls_a_batch_handler_with_a_batch_of_one() -> None:
    app = make_app()

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int | EntityNotFound]:
        return [EntityNotFound("nothing") if e.entity_id == "gone" else 4 for e in events]

    found, gone = event("here"), event("gone")
    async with TestConsumer(app) as t:
        acks = await t.deliver(found, gone)
        assert [c.args for c in t.mock(delete_users).call_args_list] == [([found],), ([gone],)]
    assert statuses(acks) == [("here", AckStatus.COMPLETED, 4), ("gone", AckStatus.NOT_FOUND, 0)]


class PlainBatchingStore:
    """A custom batching store without `batch_lookup`: an in-memory one, wrapped, that
    notes whether a batch transaction is open when it is asked to look up."""

    def __init__(self) -> None:
        self.inner = InMemoryIdempotencyStore()
        self.open_batches = 0
        self.lookups_during_a_batch = 0
        self.lookups = 0

    @property
    def provides_connection(self) -> bool:
        return False

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def lookup(
        self, service: str, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        self.lookups += 1
        self.lookups_during_a_batch += self.open_batches > 0
        return await self.inner.lookup(service, event_ids)

    def transaction(
        self, service: str, event_id: uuid.UUID
    ) -> AbstractAsyncContextManager[StoreTransaction]:
        return self.inner.transaction(service, event_id)

    @asynccontextmanager
    async def batch(self, service: str) -> AsyncIterator[BatchTransaction]:
        self.open_batches += 1
        try:
            async with self.inner.batch(service) as batch:
                yield batch
        finally:
            self.open_batches -= 1


async def test_a_store_that_cannot_look_up_in_its_batch_is_asked_before_it_opens() -> None:
    # Both at once could wait forever on a pool of one connection.
    store = PlainBatchingStore()
    assert isinstance(store, BatchingStore)
    assert not isinstance(store, LookupInBatch)
    app = make_app()
    calls: list[list[str]] = []

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent]) -> list[int]:
        calls.append([e.entity_id for e in events])
        return [1] * len(events)

    events = [event("1"), event("2"), event("3")]
    async with TestConsumer(app, store=store) as t:
        acks = await t.deliver_batch(*events)
        again = await t.deliver_batch(*events)
    assert calls == [["1", "2", "3"]]
    assert [a.status for a in [*acks, *again]] == [AckStatus.COMPLETED] * 6
    assert sum("redelivered" in a.detail for a in again) == 3
    assert store.lookups >= 2
    assert store.lookups_during_a_batch == 0
