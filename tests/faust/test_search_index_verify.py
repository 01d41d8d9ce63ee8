"""The Faust adapter answers verify events (SPEC §12) as the core SDK does: the Faust
example service as a real process on the real broker counts what it still indexes, and a
verify event never reaches its delete handler."""

from __future__ import annotations

import signal

from sqlalchemy import func, select

from coordinator.store.db import make_engine
from schemas import AckStatus, EventType, KafkaSettings, RetentionAck, decode
from services import search_index
from tests.faust.test_search_index_process import start
from tests.sdk.helpers import event
from tests.sdk.kafka_io import produce, read_topic


async def test_faust_service_answers_verify_events(
    topics: KafkaSettings, fresh_database: str
) -> None:
    await search_index.seed(fresh_database, ["gone", "kept"])
    delete = event("gone")
    # In one partition's order: the delete first, then both verify events.
    verify_gone = event("gone", action=EventType.VERIFY)
    verify_kept = event("kept", action=EventType.VERIFY)
    # A tree of two as the relay signs them (proof format v2), then a tree of one.
    await produce(topics, [delete, verify_gone, verify_kept], tree=2)
    proc = start(topics, fresh_database, "-m", "services.search_index")
    try:
        acks = [
            decode(RetentionAck, r.value)
            for r in await read_topic(topics, topics.topics.acks, expect=3, timeout_s=60)
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output.decode()[-3000:]
    by_event = {a.event_id: (a.status, a.records_affected) for a in acks}
    assert by_event == {
        delete.event_id: (AckStatus.COMPLETED, 2),
        verify_gone.event_id: (AckStatus.VERIFIED, 0),
        verify_kept.event_id: (AckStatus.STILL_PRESENT, 2),
    }
    engine = make_engine(fresh_database)
    try:
        async with engine.connect() as conn:
            kept = await conn.scalar(
                select(func.count())
                .select_from(search_index.documents)
                .where(search_index.documents.c.user_id == "kept")
            )
            applied = await conn.scalar(select(func.count()).select_from(search_index.erasure_log))
    finally:
        await engine.dispose()
    # The verify event for `kept` deleted nothing; only the delete event was applied.
    assert (kept, applied) == (2, 1)
