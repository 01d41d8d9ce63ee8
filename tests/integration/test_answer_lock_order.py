"""Verify answers and ack batches recorded side by side by two trackers (two connections
to the real PostgreSQL): the verify path reopens and completes again the entity's delete
events, rows the ack path locks, reads and rewrites. Both must lock those events in one
order, before the audit chain's lock, or one batch dies in a deadlock or writes an event
state computed from rows another batch changed meanwhile (docs/verification.md).

Each test pauses one batch inside the ack path, with its events locked, and lets the other
run until it is done or waits on a lock (PostgreSQL's own view: `pg_blocking_pids`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from structlog.testing import capture_logs

from coordinator.clock import FrozenClock
from coordinator.copies.verification import answers
from coordinator.evidence import audit
from coordinator.policy.model import DeclaredService
from coordinator.store.tables import (
    audit_log,
    event_status,
    expected_acks,
    verifications,
    verify_answers,
)
from coordinator.tracking import ledger
from coordinator.tracking.tracker import Tracker
from schemas import AckStatus, EventType, KafkaSettings, RetentionAck
from tests.integration.tracking_support import make_tracker

NOW = datetime.now(UTC).replace(microsecond=0)
SERVICES = ("billing", "search")


@pytest.fixture
async def tracker(
    coordinator_db: str, kafka_settings: KafkaSettings, engine: AsyncEngine
) -> AsyncIterator[Tracker]:
    # Never started: only its batch statements run, on connections the test holds.
    made, own_engine, _ = make_tracker(
        coordinator_db,
        kafka_settings,
        FrozenClock(NOW),
        services=[
            DeclaredService(name=name, owner="tests", handles={"user": [EventType.DELETE]})
            for name in SERVICES
        ],
    )
    yield made
    await own_engine.dispose()


class _Entity:
    def __init__(self) -> None:
        self.id = f"lock-{uuid.uuid4().hex[:10]}"
        self.offset = uuid.uuid4().int % 10**12

    def consumed(
        self, event_id: uuid.UUID, service: str, status: AckStatus, *, attempt: int = 1
    ) -> ledger.ConsumedAck:
        self.offset += 1
        ack = RetentionAck(
            event_id=event_id,
            service=service,
            entity_type="user",
            entity_id=self.id,
            status=status,
            records_affected=1 if status is AckStatus.STILL_PRESENT else 0,
            attempt=attempt,
            acknowledged_at=NOW + timedelta(seconds=attempt),
        )
        return ledger.ConsumedAck("acks", 0, self.offset, ack)


async def _deletion(
    engine: AsyncEngine,
    entity: _Entity,
    state: str,
    statuses: dict[str, str],
    *,
    published: datetime = NOW - timedelta(hours=1),
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    event_id = event_id or uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(event_status).values(
                event_id=event_id,
                policy="accounts",
                event_type="delete",
                entity_type="user",
                entity_id=entity.id,
                initiated_at=published,
                published_at=published,
                deadline=published + timedelta(days=30),
                state=state,
                expected=len(statuses),
                completed_at=published if state in ("completed", "resurrected") else None,
                tracked_at=published,
                updated_at=published,
            )
        )
        await conn.execute(
            insert(expected_acks),
            [
                {
                    "event_id": event_id,
                    "service": service,
                    "status": status,
                    "acknowledged_at": None if status == "pending" else published,
                }
                for service, status in statuses.items()
            ],
        )
    return event_id


async def _verification(
    engine: AsyncEngine, entity: _Entity, *, answered: datetime | None = None
) -> uuid.UUID:
    """A verify event asking billing; `answered`: billing answered `still_present` then."""
    event_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(verifications).values(
                event_id=event_id,
                entity_type="user",
                entity_id=entity.id,
                policy="on_demand",
                trigger="on_demand",
                requested_by="tester",
                requested_at=NOW - timedelta(hours=1),
            )
        )
        await conn.execute(
            insert(verify_answers).values(
                event_id=event_id,
                service="billing",
                **(
                    {}
                    if answered is None
                    else {
                        "status": "still_present",
                        "records_affected": 1,
                        "acknowledged_at": answered,
                    }
                ),
            )
        )
    return event_id


async def _state(engine: AsyncEngine, event_id: uuid.UUID) -> tuple[str, dict[str, str]]:
    async with engine.connect() as conn:
        state = await conn.scalar(
            select(event_status.c.state).where(event_status.c.event_id == event_id)
        )
        rows = await conn.execute(
            select(expected_acks.c.service, expected_acks.c.status).where(
                expected_acks.c.event_id == event_id
            )
        )
        return str(state), {service: status for service, status in rows}


async def _actions_since(engine: AsyncEngine, seq: int) -> list[str]:
    async with engine.connect() as conn:
        return list(
            await conn.scalars(
                select(audit_log.c.action).where(audit_log.c.seq > seq).order_by(audit_log.c.seq)
            )
        )


async def _head(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.coalesce(func.max(audit_log.c.seq), 0))) or 0)


@contextmanager
def _paused(
    monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[..., bool]
) -> Iterator[tuple[asyncio.Event, asyncio.Event]]:
    """Pause the ack path at `ledger.<name>`, the first call `when` picks: `reached` is
    set there, and it goes on once `go` is."""
    reached, go = asyncio.Event(), asyncio.Event()
    original: Callable[..., Awaitable[Any]] = getattr(ledger, name)

    async def pausing(*args: Any) -> Any:
        if not reached.is_set() and when(*args):
            reached.set()
            await go.wait()
        return await original(*args)

    with monkeypatch.context() as patch:
        patch.setattr(ledger, name, pausing)
        yield reached, go


async def _record(
    tracker: Tracker,
    engine: AsyncEngine,
    records: list[ledger.ConsumedAck],
    pid: asyncio.Future[int] | None = None,
) -> None:
    """One batch as the tracker records it, in a transaction of its own."""
    async with engine.connect() as conn:
        if pid is not None:
            pid.set_result(int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0))
            await conn.rollback()
        await tracker._record_retrying(conn, records)


async def _until_done_or_waiting(engine: AsyncEngine, task: asyncio.Task[None], pid: int) -> None:
    """Until `task` ended or its backend waits for a lock another transaction holds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 60
    async with engine.connect() as conn:
        while loop.time() < give_up:
            if task.done():
                return
            blockers = await conn.scalar(select(func.pg_blocking_pids(pid)))
            if blockers:
                return
            await conn.rollback()
            await asyncio.sleep(0.005)
    raise AssertionError("the second batch neither ended nor waited for a lock")


async def _interleave(
    tracker: Tracker,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    *,
    paused: list[ledger.ConsumedAck],
    pause_at: str,
    when: Callable[..., bool],
    other: list[ledger.ConsumedAck],
) -> None:
    """Record `paused` up to `ledger.<pause_at>` (its events locked, their expected rows
    read), then `other` until it is done or waits, then let `paused` go on; both must
    commit."""
    with _paused(monkeypatch, pause_at, when) as (reached, go):
        first = asyncio.create_task(_record(tracker, engine, paused))
        await asyncio.wait_for(reached.wait(), 30)
        pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        second = asyncio.create_task(_record(tracker, engine, other, pid))
        try:
            await _until_done_or_waiting(engine, second, await pid)
        finally:
            go.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures


def _folding(_conn: AsyncConnection, fresh: list[Any], *_: Any) -> bool:
    return bool(fresh)


def _recording(_conn: AsyncConnection, accepted: list[Any], *_: Any) -> bool:
    return bool(accepted)


async def test_a_still_present_answer_waits_for_an_ack_batch_holding_the_event(
    tracker: Tracker, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ack batch has locked the completed deletion and waits for the chain's lock; the
    # answer, holding the chain's lock, reopening that deletion: a lock-order deadlock.
    entity = _Entity()
    deletion = await _deletion(
        engine, entity, "completed", {"billing": "completed", "search": "not_found"}
    )
    asked = await _verification(engine, entity)
    head = await _head(engine)
    await _interleave(
        tracker,
        engine,
        monkeypatch,
        # A re-send, attempt 2: new to the ledger, its row's count moves.
        paused=[entity.consumed(deletion, "search", AckStatus.NOT_FOUND, attempt=2)],
        pause_at="_record_and_audit",
        when=_recording,
        other=[entity.consumed(asked, "billing", AckStatus.STILL_PRESENT)],
    )
    assert await _state(engine, deletion) == (
        "resurrected",
        {"billing": "still_present", "search": "not_found"},
    )
    assert await _actions_since(engine, head) == [
        audit.AuditAction.ACKS_ACCEPTED,
        audit.AuditAction.VERIFY_ANSWERS,
        audit.AuditAction.ENTITY_RESURRECTED,
    ]


async def test_an_ack_batch_never_completes_an_event_reopened_after_it_read_it(
    tracker: Tracker, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Search's ack completes the last open row; billing's `still_present` answer lands
    # between the ack batch reading the rows and writing the state it computed from them.
    entity = _Entity()
    deletion = await _deletion(
        engine, entity, "pending", {"billing": "completed", "search": "pending"}
    )
    asked = await _verification(engine, entity)
    head = await _head(engine)
    await _interleave(
        tracker,
        engine,
        monkeypatch,
        paused=[entity.consumed(deletion, "search", AckStatus.COMPLETED)],
        pause_at="_fold",
        when=_folding,
        other=[entity.consumed(asked, "billing", AckStatus.STILL_PRESENT)],
    )
    assert await _state(engine, deletion) == (
        "resurrected",
        {"billing": "still_present", "search": "completed"},
    )
    # Recorded in the order the batches committed: the ack's completion, then the answer.
    assert await _actions_since(engine, head) == [
        audit.AuditAction.ACKS_ACCEPTED,
        audit.AuditAction.EVENTS_COMPLETED,
        audit.AuditAction.VERIFY_ANSWERS,
        audit.AuditAction.ENTITY_RESURRECTED,
    ]


async def test_a_later_delete_waits_for_an_ack_batch_holding_the_resurrected_event(
    tracker: Tracker, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Billing's ack of a later delete completes the resurrected one again, while an ack
    # batch that locked it waits for the chain's lock the delete ack's batch holds.
    entity = _Entity()
    deletion = await _deletion(
        engine, entity, "resurrected", {"billing": "still_present", "search": "not_found"}
    )
    await _verification(engine, entity, answered=NOW - timedelta(minutes=30))
    later = await _deletion(engine, entity, "pending", {"billing": "pending"}, published=NOW)
    head = await _head(engine)
    await _interleave(
        tracker,
        engine,
        monkeypatch,
        paused=[entity.consumed(deletion, "search", AckStatus.NOT_FOUND, attempt=2)],
        pause_at="_record_and_audit",
        when=_recording,
        other=[entity.consumed(later, "billing", AckStatus.COMPLETED)],
    )
    assert await _state(engine, deletion) == (
        "completed",
        {"billing": "completed", "search": "not_found"},
    )
    assert await _state(engine, later) == ("completed", {"billing": "completed"})
    assert await _actions_since(engine, head) == [
        audit.AuditAction.ACKS_ACCEPTED,
        audit.AuditAction.ACKS_ACCEPTED,
        audit.AuditAction.EVENTS_COMPLETED,
        audit.AuditAction.ENTITY_DELETED_AGAIN,
    ]


async def test_an_ack_batch_never_leaves_resurrected_an_event_a_later_delete_completed(
    tracker: Tracker, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Search's ack closes the last open row of a deletion billing was found holding; the
    # later delete's ack completes billing's row meanwhile: nothing is left open.
    entity = _Entity()
    deletion = await _deletion(
        engine, entity, "overdue", {"billing": "still_present", "search": "pending"}
    )
    await _verification(engine, entity, answered=NOW - timedelta(minutes=30))
    later = await _deletion(engine, entity, "pending", {"billing": "pending"}, published=NOW)
    await _interleave(
        tracker,
        engine,
        monkeypatch,
        paused=[entity.consumed(deletion, "search", AckStatus.COMPLETED)],
        pause_at="_fold",
        when=_folding,
        other=[entity.consumed(later, "billing", AckStatus.COMPLETED)],
    )
    assert await _state(engine, deletion) == (
        "completed",
        {"billing": "completed", "search": "completed"},
    )
    assert await _state(engine, later) == ("completed", {"billing": "completed"})


async def test_a_later_delete_acked_while_an_answer_holds_the_entity_completes_it_again(
    tracker: Tracker, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Billing answers `still_present` (at NOW+1s); its ack of a delete published after
    # the answer waits for the answer's batch, which holds every delete of the entity,
    # then must complete again what the answer reopened meanwhile.
    entity = _Entity()
    deletion = await _deletion(
        engine, entity, "completed", {"billing": "completed", "search": "not_found"}
    )
    asked = await _verification(engine, entity)
    later = await _deletion(
        engine, entity, "pending", {"billing": "pending"}, published=NOW + timedelta(seconds=10)
    )
    head = await _head(engine)
    await _interleave(
        tracker,
        engine,
        monkeypatch,
        paused=[entity.consumed(asked, "billing", AckStatus.STILL_PRESENT)],
        pause_at="_fold",
        when=_always,
        other=[entity.consumed(later, "billing", AckStatus.COMPLETED)],
    )
    assert await _state(engine, later) == ("completed", {"billing": "completed"})
    assert await _state(engine, deletion) == (
        "completed",
        {"billing": "completed", "search": "not_found"},
    )
    assert await _actions_since(engine, head) == [
        audit.AuditAction.VERIFY_ANSWERS,
        audit.AuditAction.ENTITY_RESURRECTED,
        audit.AuditAction.ACKS_ACCEPTED,
        audit.AuditAction.EVENTS_COMPLETED,
        audit.AuditAction.ENTITY_DELETED_AGAIN,
    ]


async def test_an_answer_recorded_after_a_later_delete_was_acked_reopens_nothing(
    tracker: Tracker, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other order: the later delete's batch holds it, the answer (NOW+1s) waits for
    # it, then finds the delete published after it done: what it found is deleted again.
    entity = _Entity()
    deletion = await _deletion(
        engine, entity, "completed", {"billing": "completed", "search": "not_found"}
    )
    asked = await _verification(engine, entity)
    later = await _deletion(
        engine, entity, "pending", {"billing": "pending"}, published=NOW + timedelta(seconds=10)
    )
    head = await _head(engine)
    await _interleave(
        tracker,
        engine,
        monkeypatch,
        paused=[entity.consumed(later, "billing", AckStatus.COMPLETED)],
        pause_at="_record_and_audit",
        when=_recording,
        other=[entity.consumed(asked, "billing", AckStatus.STILL_PRESENT)],
    )
    assert await _state(engine, later) == ("completed", {"billing": "completed"})
    assert await _state(engine, deletion) == (
        "completed",
        {"billing": "completed", "search": "not_found"},
    )
    assert await _actions_since(engine, head) == [
        audit.AuditAction.ACKS_ACCEPTED,
        audit.AuditAction.EVENTS_COMPLETED,
        audit.AuditAction.VERIFY_ANSWERS,
    ]


async def test_an_answer_reopens_a_delete_tracked_and_completed_after_it_read_the_entity(
    tracker: Tracker, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the answer's batch reading the entity's deletes and taking the chain's lock,
    # another replica tracks a delete published before the answer and completes it. The
    # batch is retried with it locked, and reopens it too.
    entity = _Entity()
    deletion = await _deletion(engine, entity, "completed", {"billing": "completed"})
    asked = await _verification(engine, entity)
    reached, go = asyncio.Event(), asyncio.Event()
    original = answers.events_to_lock

    async def pausing(*args: Any) -> list[uuid.UUID]:
        found = await original(*args)
        reached.set()
        await go.wait()
        return found

    monkeypatch.setattr(answers, "events_to_lock", pausing)
    batch = asyncio.create_task(
        _record(tracker, engine, [entity.consumed(asked, "billing", AckStatus.STILL_PRESENT)])
    )
    await asyncio.wait_for(reached.wait(), 30)
    meanwhile = await _deletion(
        engine, entity, "completed", {"billing": "completed"}, published=NOW - timedelta(minutes=5)
    )
    go.set()
    await asyncio.wait_for(batch, 60)
    for event_id in (deletion, meanwhile):
        assert await _state(engine, event_id) == ("resurrected", {"billing": "still_present"})


async def test_an_answer_reopens_only_what_no_later_delete_ended(
    tracker: Tracker, engine: AsyncEngine
) -> None:
    # Billing's answer at NOW+1s: a delete published before it and done is reopened; a
    # delete published after it and done at billing (recorded first) means the data
    # the answer found was deleted since: nothing is reopened for that entity.
    reopened, ended = _Entity(), _Entity()
    before = await _deletion(engine, reopened, "completed", {"billing": "completed"})
    also = await _deletion(
        engine,
        reopened,
        "completed",
        {"billing": "not_found"},
        published=NOW - timedelta(minutes=1),
    )
    kept = await _deletion(engine, ended, "completed", {"billing": "completed"})
    after = await _deletion(
        engine, ended, "completed", {"billing": "completed"}, published=NOW + timedelta(seconds=10)
    )
    asked = [await _verification(engine, e) for e in (reopened, ended)]
    head = await _head(engine)
    await _record(
        tracker,
        engine,
        [
            reopened.consumed(asked[0], "billing", AckStatus.STILL_PRESENT),
            ended.consumed(asked[1], "billing", AckStatus.STILL_PRESENT),
        ],
    )
    for event_id in (before, also):
        assert await _state(engine, event_id) == ("resurrected", {"billing": "still_present"})
    for event_id in (kept, after):
        assert await _state(engine, event_id) == ("completed", {"billing": "completed"})
    async with engine.connect() as conn:
        resurrected = (
            await conn.execute(
                select(audit_log.c.data).where(
                    audit_log.c.seq > head,
                    audit_log.c.action == audit.AuditAction.ENTITY_RESURRECTED,
                )
            )
        ).scalars()
        assert [p["entity_id"] for p in resurrected] == [reopened.id]


async def test_a_later_delete_finding_a_reopened_event_held_elsewhere_retries_in_order(
    tracker: Tracker, engine: AsyncEngine
) -> None:
    # The later delete's batch reads, once it holds its own event, the resurrected event
    # to complete again; another transaction holds that one. Out of the sorted order, the
    # batch does not wait for it: it rolls back and locks it in the sorted pass, waiting
    # its turn there, then completes it again.
    entity = _Entity()
    deletion = await _deletion(engine, entity, "resurrected", {"billing": "still_present"})
    await _verification(engine, entity, answered=NOW - timedelta(minutes=30))
    later = await _deletion(engine, entity, "pending", {"billing": "pending"}, published=NOW)
    async with engine.connect() as holder:
        await holder.execute(
            select(event_status.c.event_id)
            .where(event_status.c.event_id == deletion)
            .with_for_update()
        )
        pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with capture_logs() as logs:
            batch = asyncio.create_task(
                _record(
                    tracker, engine, [entity.consumed(later, "billing", AckStatus.COMPLETED)], pid
                )
            )
            await _until_done_or_waiting(engine, batch, await pid)
            assert not batch.done()
            await holder.rollback()
            await asyncio.wait_for(batch, 60)
    assert [e["events"] for e in logs if e["event"] == "ack_batch_contended"] == [1]
    assert await _state(engine, deletion) == ("completed", {"billing": "completed"})
    assert await _state(engine, later) == ("completed", {"billing": "completed"})


async def test_the_overtaken_path_never_waits_for_an_event_lock_after_tracking(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch's first pass misses the event; another replica tracks it and holds it
    # before this batch's tracking (which takes the chain's lock) is done. Waiting for it
    # now could close a deadlock (that replica may wait for the chain): the batch rolls
    # back and is retried instead.
    entity = _Entity()
    event_id = uuid.uuid4()
    holder = await engine.connect()
    original = ledger.track_events

    async def tracked_elsewhere(conn: AsyncConnection, *args: Any, **kwargs: Any) -> Any:
        assert await _deletion(engine, entity, "pending", {"billing": "pending"}, event_id=event_id)
        await holder.execute(
            select(event_status.c.event_id)
            .where(event_status.c.event_id == event_id)
            .with_for_update()
        )
        return await original(conn, *args, **kwargs)

    monkeypatch.setattr(ledger, "track_events", tracked_elsewhere)
    try:
        async with engine.connect() as conn:
            with pytest.raises(ledger.Contended) as raised:
                async with conn.begin():
                    await asyncio.wait_for(
                        ledger.apply_acks(
                            conn,
                            [entity.consumed(event_id, "billing", AckStatus.COMPLETED)],
                            declared=[],
                            now=NOW,
                            reminder_interval=timedelta(hours=1),
                        ),
                        30,
                    )
        assert raised.value.events == [event_id]
    finally:
        await holder.close()


async def test_what_a_batch_locks_for_answers_and_later_deletes(engine: AsyncEngine) -> None:
    entity, other = _Entity(), _Entity()
    first = await _deletion(engine, entity, "completed", {"billing": "completed"})
    second = await _deletion(engine, entity, "pending", {"billing": "pending"})
    await _deletion(engine, other, "completed", {"billing": "completed"})
    asked = await _verification(engine, entity)
    found = entity.consumed(asked, "billing", AckStatus.STILL_PRESENT)
    forged = ledger.ConsumedAck(
        found.topic, 0, found.offset + 1, found.ack, refused=ledger.RejectReason.BAD_SIGNATURE
    )
    done = entity.consumed(second, "billing", AckStatus.COMPLETED)
    async with engine.connect() as conn:
        # Every delete event of the entity found, none of another's; a refused answer
        # (anyone can write the acks topic) locks nothing.
        assert set(await answers.events_to_lock(conn, [found, done], {asked})) == {
            first,
            second,
        }
        assert await answers.events_to_lock(conn, [forged, done], {asked}) == []
        assert (
            await answers.events_to_lock(
                conn, [entity.consumed(asked, "billing", AckStatus.VERIFIED)], {asked}
            )
            == []
        )
    async with engine.connect() as conn, conn.begin():
        # Nothing reopened anywhere (other tests' reopenings hidden until the rollback):
        # one probe of the partial index, whatever the batch holds.
        await conn.execute(
            expected_acks.update()
            .where(expected_acks.c.status == "still_present")
            .values(status="completed")
        )
        with _statements(conn) as ran:
            assert await answers.reopened_to_lock(conn, [done], set()) == []
        assert len(ran) == 1
        await conn.execute(
            expected_acks.update()
            .where(expected_acks.c.event_id == first)
            .values(status="still_present")
        )
        # A done ack of the entity's delete: the events its service's acknowledgement of
        # is reopened; a failed ack or another service's: none.
        with _statements(conn) as ran:
            assert await answers.reopened_to_lock(conn, [done], set()) == [first]
        assert len(ran) == 2
        failed = entity.consumed(second, "billing", AckStatus.FAILED)
        assert await answers.reopened_to_lock(conn, [failed], set()) == []
        elsewhere = entity.consumed(second, "search", AckStatus.COMPLETED)
        assert await answers.reopened_to_lock(conn, [elsewhere], set()) == []
        await conn.rollback()


@contextmanager
def _statements(conn: AsyncConnection) -> Iterator[list[str]]:
    """The statements `conn` runs inside the block."""
    ran: list[str] = []

    def seen(*args: Any) -> None:
        ran.append(args[2])

    sync = conn.sync_connection
    assert sync is not None
    sa_event.listen(sync, "before_cursor_execute", seen)
    try:
        yield ran
    finally:
        sa_event.remove(sync, "before_cursor_execute", seen)


def _always(*_: Any) -> bool:
    return True
