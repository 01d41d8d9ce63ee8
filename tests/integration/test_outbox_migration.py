"""Migration 0012: an existing per-event outbox becomes batches; nothing is lost or re-sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from coordinator.outbox.lookup import by_event_ids, events, tracked_up_to, unpublished_events
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from schemas import KafkaSettings, RetentionEvent, decode
from tests.infra import create_database, database_url, drop_database
from tests.outbox import read_records

T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)

_OLD_ROW = text(
    "INSERT INTO retention_outbox (event_id, run_id, policy, event_type, entity_type, "
    "entity_id, legal_basis, initiated_at, deadline, created_at, published_at, subject) "
    "VALUES (:event_id, :run_id, 'p', 'delete', 'user', :entity_id, 'b', :t, :deadline, :t, "
    ":published_at, :subject)"
)


async def test_old_rows_keep_their_ids_and_unpublished_ones_get_published(
    topics: KafkaSettings,
) -> None:
    url = await create_database(database_url(), "migrate_outbox")
    try:
        await upgrade(url, "0011_waivers")
        # Published and tracked, published and not tracked, never published; a v4 id
        # (before migration 0005) among them.
        kinds = {
            "tracked": (T0, True),
            "untracked": (T0 + timedelta(seconds=1), False),
            "unpublished": (None, False),
        }
        ids: dict[str, list[uuid.UUID]] = {kind: [] for kind in kinds}
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                for kind, (published_at, tracked) in kinds.items():
                    for n in range(3):
                        event_id = uuid.uuid4()
                        ids[kind].append(event_id)
                        await conn.execute(
                            _OLD_ROW,
                            {
                                "event_id": event_id,
                                "run_id": uuid.uuid4(),
                                "entity_id": f"{kind}-{n}",
                                "t": T0,
                                "deadline": T0 + timedelta(days=30),
                                "published_at": published_at,
                                "subject": f"user:{n}" if n else None,
                            },
                        )
                        if tracked:
                            await conn.execute(
                                text(
                                    "INSERT INTO retention_event_status (event_id, policy, "
                                    "event_type, entity_type, entity_id, initiated_at, "
                                    "published_at, deadline, expected, tracked_at, updated_at) "
                                    "VALUES (:e, 'p', 'delete', 'user', :i, :t, :t, :t, 1, :t, :t)"
                                ),
                                {"e": event_id, "i": f"{kind}-{n}", "t": T0},
                            )
            await upgrade(url)

            everything = [i for kind in kinds for i in ids[kind]]
            async with engine.connect() as conn:
                found = {
                    r.event_id: r for r in await conn.execute(events(by_event_ids(everything)))
                }
                assert set(found) == set(everything)
                for kind, (published_at, _) in kinds.items():
                    for n, event_id in enumerate(ids[kind]):
                        row = found[event_id]
                        assert (row.entity_id, row.published_at) == (f"{kind}-{n}", published_at)
                        assert row.subject == (f"user:{n}" if n else None)
                assert await unpublished_events(conn) == 3
                # The tracker already follows the first three; the next three it will track.
                assert await tracked_up_to(conn) == 3

            async with OutboxRelay(
                engine, topics, settings=RelaySettings(idle_sleep_s=0.05)
            ) as relay:
                assert await relay.drain(timeout_s=60) == 3
            records = await read_records(topics, topics.topics.events, expected=3)
            assert {decode(RetentionEvent, r.value).event_id for r in records} == set(
                ids["unpublished"]
            )
        finally:
            await engine.dispose()
    finally:
        await drop_database(url)
