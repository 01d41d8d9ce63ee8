"""A small, fixed world for the browser tests: three services, runs, events and acks,
written through the coordinator's own functions (registry, snapshot, ledger)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.erasure.status import complete_acknowledged
from coordinator.outbox.events import event_id
from coordinator.outbox.lookup import EVENTS, joined_on, published_up_to
from coordinator.policy.model import PolicySet
from coordinator.purge import holds
from coordinator.store.tables import (
    event_status,
    expected_acks,
    outbox_batches,
    outbox_marks,
    policy_results,
    runs,
)
from coordinator.tracking.ledger import ConsumedAck, apply_acks
from coordinator.tracking.registry import apply_registrations
from coordinator.tracking.snapshot import track_published
from demo.seed_data import create_seed_tables, populate
from schemas import AckStatus, EventType
from tests.integration.tracking_support import ack, registration

SERVICES = ("billing", "notifications", "search_index")
# Who must acknowledge (SPEC §9: the declaration, not the registrations): every service,
# for every entity type the seed publishes.
DECLARED = [
    (s, entity_type, action)
    for s in SERVICES
    for entity_type in ("session", "cart", "order", "user")
    for action in ("delete", "anonymize")
]
REMINDERS = timedelta(hours=6)
DEADLINE = timedelta(days=30)
COMPLETE = "1001"  # every service confirmed
PARTIAL = "1002"  # billing confirmed, the others not
FAILED = "1003"  # notifications failed, the others not
# Backlog age in days per policy of tests/data/seed_policies.yaml (retention in comments).
BACKLOG = {
    "session_logs": 96.5,  # 90 d: late
    "analytics_events": 120.0,  # 395 d
    "purchase_records": 2100.0,  # 2557 d
    "support_tickets": 700.0,  # 1095 d
    "abandoned_carts": 33.0,  # 30 d: late
}


def fixed_id(kind: int, n: int) -> uuid.UUID:
    return uuid.UUID(int=(kind << 120) | n)


async def seed(engine: AsyncEngine, now: datetime, policy_set: PolicySet) -> list[uuid.UUID]:
    """Write the world at `now`; return the event ids of the three entities, in order."""
    async with engine.begin() as conn:
        # The seed tables and their rows: erasure requests act on them.
        await create_seed_tables(conn)
        await populate(conn, now, per_category=2)
        await holds.create_hold(
            conn,
            entities=["session:4001", "session:4002", "order:77"],
            types=await holds.entity_types(conn, policy_set),
            reason="Subject access request SAR-2026-031: keep until answered",
            created_by="dpo-office",
            now=now - timedelta(days=5),
            hold_id="sar-2026-031",
        )
        await apply_registrations(
            conn,
            [
                registration(s, now - timedelta(days=2), "session", "cart", "order", "user")
                for s in SERVICES
            ],
        )
    # Fixed ids, like the clock: the screenshots in docs/ come out the same on every run.
    base = event_id(fixed_id(0xE0, 0), 0)
    event_ids = [event_id(base, n) for n in (1, 2, 3)]
    published = now - timedelta(hours=1)
    async with engine.begin() as conn:
        # One purge batch of three sessions, written as the purge writes it but with a
        # fixed id base, then marked published.
        seq = await conn.scalar(
            insert(outbox_batches)
            .values(
                seq=select(func.coalesce(func.max(outbox_batches.c.seq), 0) + 1).scalar_subquery(),
                id_base=base,
                id_first=1,
                events=3,
                run_id=fixed_id(0xA0, 1),
                policy="session_logs",
                event_type=EventType.DELETE.value,
                entity_type="session",
                legal_basis="Legitimate interest (security monitoring)",
                fields=[],
                initiated_at=published - timedelta(minutes=5),
                deadline=published - timedelta(minutes=5) + DEADLINE,
                entity_ids=[COMPLETE, PARTIAL, FAILED],
                created_at=published - timedelta(minutes=5),
            )
            .returning(outbox_batches.c.seq)
        )
        await conn.execute(insert(outbox_marks).values(up_to=seq, published_at=published, events=3))
    acks = [ack(event_ids[0], s, COMPLETE, now, entity_type="session") for s in SERVICES]
    acks.append(ack(event_ids[1], "billing", PARTIAL, now, entity_type="session"))
    acks.append(
        ack(
            event_ids[2],
            "notifications",
            FAILED,
            now,
            entity_type="session",
            status=AckStatus.FAILED,
        )
    )
    async with engine.begin() as conn:
        await track_published(
            conn, declared=DECLARED, now=now, reminder_interval=REMINDERS, limit=100
        )
        await apply_acks(
            conn,
            [ConsumedAck("acks", 0, offset, a) for offset, a in enumerate(acks)],
            declared=DECLARED,
            now=now,
            reminder_interval=REMINDERS,
        )
        for day in (3, 2, 1):
            run_id = fixed_id(0xA0, day)
            started = now - timedelta(days=day, hours=-3)
            await conn.execute(
                insert(runs).values(
                    id=run_id,
                    started_at=started,
                    finished_at=started + timedelta(seconds=42),
                    status="ok" if day > 1 else "errors",
                    trigger="schedule:global",
                )
            )
            await conn.execute(
                insert(policy_results),
                [
                    {
                        "run_id": run_id,
                        "policy": name,
                        "action": "delete",
                        "status": "error" if day == 1 and name == "abandoned_carts" else "ok",
                        "processed": 1000 * (i + 1) * day,
                        "held": i,
                        "events": 3 if name == "session_logs" else 0,
                        "duration_s": 1.5 * (i + 1),
                        "oldest_unprocessed_days": backlog + 1 - day,
                        "errors": (
                            ["UndefinedTable (SQLSTATE 42P01)"]
                            if day == 1 and name == "abandoned_carts"
                            else []
                        ),
                        "started_at": started,
                        "finished_at": started + timedelta(seconds=40),
                    }
                    for i, (name, backlog) in enumerate(BACKLOG.items())
                ],
            )
    return event_ids


async def publish_request(engine: AsyncEngine, request_id: uuid.UUID, now: datetime) -> None:
    """Play relay and tracker for one erasure request's events: publish and track them."""
    async with engine.begin() as conn:
        b, watermark = outbox_batches.c, await published_up_to(conn)
        up_to, events = (
            await conn.execute(select(func.max(b.seq), func.sum(b.events)).where(b.seq > watermark))
        ).one()
        if up_to is not None:
            await conn.execute(
                insert(outbox_marks).values(up_to=up_to, published_at=now, events=events)
            )
        await track_published(
            conn, declared=DECLARED, now=now, reminder_interval=REMINDERS, limit=1000
        )


async def acknowledge_request(engine: AsyncEngine, request_id: uuid.UUID, now: datetime) -> int:
    """Every service acknowledges what it owes for the request, then the completion pass
    of `serve` runs; returns the acks applied."""
    async with engine.begin() as conn:
        s, e = event_status.c, expected_acks.c
        owed = (
            await conn.execute(
                select(s.event_id, s.entity_type, s.entity_id, e.service)
                .join_from(expected_acks, event_status, s.event_id == e.event_id)
                .join(EVENTS, joined_on(s.event_id))
                .where(EVENTS.c.request_id == request_id, e.status == "pending")
            )
        ).all()
        acks = [
            ack(row.event_id, row.service, row.entity_id, now, entity_type=row.entity_type)
            for row in owed
        ]
        await apply_acks(
            conn,
            [ConsumedAck("acks", 1, 1000 + n, a) for n, a in enumerate(acks)],
            declared=DECLARED,
            now=now,
            reminder_interval=REMINDERS,
        )
        await complete_acknowledged(conn, now=now)
    return len(acks)
