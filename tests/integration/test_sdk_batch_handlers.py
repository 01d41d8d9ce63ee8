"""Set-based handlers on the real broker and PostgreSQL: one call for a partition batch,
a culprit isolated after the call raises (its neighbours' writes kept once), acks before
the offset commit. One partition, so the events arrive as one batch in produced order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import AckStatus, DlqHeader, HandlerContext, RetentionConsumer, RetentionEvent
from schemas import KafkaSettings, decode
from tests.integration.test_sdk_batches import one_partition, table
from tests.integration.test_sdk_delivery import FAST, acks_of, erased, rows, service_name
from tests.sdk.helpers import event
from tests.sdk.kafka_io import committed, produce, read_topic

__all__ = ["one_partition", "table"]  # fixtures, imported to be used here


async def test_one_call_per_batch_and_a_raising_call_isolates_its_culprit(
    one_partition: KafkaSettings, table: str
) -> None:
    kafka, service = one_partition, service_name()
    a, b, bad, c, a_again, d = (
        event("a"),
        event("b"),
        event("bad"),
        event("c"),
        event("a"),
        event("d"),
    )
    tag = {
        e.event_id: name
        for e, name in zip(
            (a, b, bad, c, a_again, d), ["a", "b", "bad", "c", "a2", "d"], strict=True
        )
    }
    calls: list[tuple[list[str], int, int]] = []
    app = RetentionConsumer(service, kafka=kafka, settings=FAST, database_url=table)

    @app.on_delete_batch("user")
    async def delete_users(events: Sequence[RetentionEvent], ctx: HandlerContext) -> list[int]:
        conn: AsyncConnection = ctx.connection
        txid = (await conn.execute(text("SELECT txid_current()"))).scalar_one()
        calls.append(([tag[e.event_id] for e in events], ctx.attempt, txid))
        # Written before failing: a failed call must roll back its own writes only.
        await conn.execute(
            erased.insert(),
            [{"event_id": str(e.event_id), "entity_id": tag[e.event_id], "seq": 0} for e in events],
        )
        if any(tag[e.event_id] == "bad" for e in events):
            raise ConnectionError("downstream unavailable")
        return [1 for _ in events]

    await produce(kafka, [a, b, bad, c, a_again, d])
    await app.start()
    try:
        acks = await acks_of(kafka, expect=6)
        dlq = await read_topic(kafka, kafka.topics.dlq, expect=1)
    finally:
        await app.stop()

    got = {tag[ack.event_id]: (ack.status, ack.attempt) for ack in acks}
    assert got == {
        "a": (AckStatus.COMPLETED, 1),
        "b": (AckStatus.COMPLETED, 1),
        "bad": (AckStatus.FAILED, 3),
        "c": (AckStatus.COMPLETED, 1),
        "a2": (AckStatus.COMPLETED, 1),
        "d": (AckStatus.COMPLETED, 1),
    }
    [dead] = dlq
    assert decode(RetentionEvent, dead.value) == bad
    assert dict(dead.headers)[DlqHeader.ATTEMPTS] == b"3"
    # The group stops before a second event of `a`; it fails, so its events go one by
    # one until the retried culprit ends the run; the rest is one call again.
    assert [(names, attempt) for names, attempt, _ in calls] == [
        (["a", "b", "bad", "c"], 1),
        (["a"], 1),
        (["b"], 1),
        (["bad"], 1),
        (["bad"], 2),
        (["bad"], 3),
        (["c", "a2", "d"], 1),
    ]
    txids = [txid for _, _, txid in calls]
    assert len(set(txids[0:4])) == 1  # the failed call and the isolation: one transaction
    assert len(set(txids)) == 4  # that run, two retries on their own, the last run
    # Each effect once; the failed calls' writes were rolled back.
    written = Counter(entity for _, entity, _ in await rows(table))
    assert written == Counter({"a": 1, "b": 1, "c": 1, "a2": 1, "d": 1})
    assert sum((await committed(kafka, app.group_id)).values()) == 6
