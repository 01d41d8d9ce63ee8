"""The suppression list end to end (SPEC §12, issue 20 item 5), on the real broker and
database: an erasure request lists its subject by HMAC in the same transaction, `serve`'s
publisher signs it onto the compacted erased topic, a fresh service process answers
`is_erased` true for it (false for a bystander), and billing's import path refuses to bring
the erased user's orders back. Forged records and expiry never mark or keep an entity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer_sdk import ConsumerSettings
from coordinator.clock import FrozenClock, SystemClock
from coordinator.copies.suppression.entries import Suppression, SuppressionPublisher, record_erased
from coordinator.erasure.due import Regulation
from coordinator.erasure.requests import ErasureError
from coordinator.erasure.service import Erasure
from coordinator.kafka.clients import KafkaPublisher
from coordinator.metrics import Metrics
from coordinator.policy.model import parse_policies
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import erased_entities
from schemas import KafkaSettings, encode
from schemas.suppression import ErasedEntity, read_pepper, suppression_key, write_pepper
from services import billing
from services._shared import engine_for
from services.billing.imports import import_orders
from tests import infra, keys
from tests.infra import ROOT
from tests.integration.test_erasure_requests import POLICIES, _seed
from tests.sdk.kafka_io import produce

ERASED, BYSTANDER = 42, 41


@dataclass
class World:
    engine: AsyncEngine
    kafka: KafkaSettings
    settings: Settings
    pepper_file: Path


@pytest.fixture
async def world(postgres_url: str, topics: KafkaSettings, tmp_path: Path) -> AsyncIterator[World]:
    url = await infra.create_database(postgres_url, "test_suppression")
    await upgrade(url)
    pepper_file = tmp_path / "suppression.pepper"
    write_pepper(pepper_file)
    settings = Settings(database_url=url, kafka=topics, suppression_pepper_file=pepper_file)
    engine = make_engine(url)
    await _seed(engine)
    try:
        yield World(engine, topics, settings, pepper_file)
    finally:
        await engine.dispose()
        await infra.drop_database(url)


def _publisher(world: World, clock: FrozenClock | SystemClock) -> SuppressionPublisher:
    return SuppressionPublisher(
        world.engine,
        world.kafka.topics,
        KafkaPublisher(world.kafka),
        keys.signer(keys.COORDINATOR),
        clock=clock,
    )


async def _publish(world: World, clock: FrozenClock | SystemClock) -> tuple[int, int]:
    publisher = _publisher(world, clock)
    await publisher.start()
    try:
        return await publisher.publish_once()
    finally:
        await publisher.stop()


def _ask_in_a_fresh_process(world: World, *entities: tuple[str, str]) -> list[bool]:
    """`is_erased` for each entity, from a new service process that never saw anything."""
    code = (
        "import asyncio, json, sys\n"
        "from services.billing import create_app\n"
        "async def main():\n"
        "    app = create_app()\n"
        "    try:\n"
        "        found = [await app.is_erased(t, i) for t, i in json.loads(sys.argv[1])]\n"
        "    finally:\n"
        "        await app.stop()\n"
        "    print(json.dumps(found))\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update(world.kafka.environ())
    env.update(infra.signing_env())
    env["RETENTION_SUPPRESSION_PEPPER_FILE"] = str(world.pepper_file)
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(entities)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: list[bool] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


async def test_an_erased_user_is_erased_in_a_fresh_process_and_not_reimported(
    world: World, fresh_database: str
) -> None:
    erasure = Erasure(
        world.engine,
        parse_policies(POLICIES, "erasure.yaml"),
        world.settings,
        SystemClock(),
        Metrics(),
    )
    await erasure.create(
        subject=f"user:{ERASED}",
        regulation=Regulation.GDPR,
        received_at=None,
        reference=None,
        by="dpo@example.com",
    )
    pepper = read_pepper(world.pepper_file)
    key = suppression_key(pepper, "user", str(ERASED))
    async with world.engine.connect() as conn:
        listed = list(await conn.execute(select(erased_entities)))
    assert [row.key for row in listed] == [key]
    assert listed[0].published_at is None
    # Only the HMAC is stored: no clear id of the erased user in any column (the
    # timestamps are left out: their digits may spell the id by chance).
    for value in listed[0]:
        if value is None or isinstance(value, datetime):
            continue
        assert str(ERASED) not in str(value).replace(key, ""), value

    assert await _publish(world, SystemClock()) == (1, 0)
    assert await _publish(world, SystemClock()) == (0, 0)

    assert _ask_in_a_fresh_process(
        world, ("user", str(ERASED)), ("user", str(BYSTANDER)), ("order", str(ERASED))
    ) == [True, False, False]

    # Billing's import path: the erased user's order is refused, the bystander's imported.
    app = billing.create_app(
        database_url=fresh_database,
        kafka=world.kafka,
        settings=ConsumerSettings(suppression_pepper_file=world.pepper_file),
    )
    engine = engine_for(fresh_database)
    try:
        async with engine.begin() as conn:
            await billing.EXAMPLE.create_tables(conn)
            rows = [
                _order("o-erased", ERASED),
                _order("o-bystander", BYSTANDER),
                _order("o-nobody", None),
            ]
            result = await import_orders(app, conn, rows)
            assert result.refused == ["o-erased"]
            assert result.imported == ["o-bystander", "o-nobody"]
            again = await import_orders(app, conn, rows)
            assert (again.refused, again.existing) == (["o-erased"], ["o-bystander", "o-nobody"])
            stored = set((await conn.execute(select(billing.orders.c.id))).scalars())
        assert stored == {"o-bystander", "o-nobody"}
    finally:
        await app.stop()
        await engine.dispose()


async def test_forged_records_are_ignored_and_entries_expire(world: World, tmp_path: Path) -> None:
    pepper = read_pepper(world.pepper_file)
    suppression = Suppression(pepper, timedelta(days=1))
    now = datetime.now(UTC)
    async with world.engine.begin() as conn:
        await record_erased(conn, suppression, "user", "7", now=now - timedelta(days=2))
        await record_erased(conn, suppression, "user", "8", now=now)
    assert await _publish(world, SystemClock()) == (2, 1)  # user:7 expired: a tombstone

    erased = world.kafka.topics.erased
    # Anyone can write the topic without the coordinator's key; nobody should be marked.
    forged = suppression_key(pepper, "user", "9")
    entry = ErasedEntity(key=forged, erased_at=now, expires_at=now + timedelta(days=1))
    await produce(world.kafka, [(forged.encode(), encode(entry))], signer=None, topic=erased)
    await produce(
        world.kafka, [(forged.encode(), encode(entry))], signer=keys.signer("billing"), topic=erased
    )
    # Nor lift a real entry with a forged tombstone.
    live = suppression_key(pepper, "user", "8")
    await produce(world.kafka, [(live.encode(), None)], signer=None, topic=erased)
    # Nor with genuine records replayed: an earlier erasure's entry, then its tombstone
    # (a signature covers key and value only, so both verify).
    stale = ErasedEntity(
        key=live, erased_at=now - timedelta(days=3), expires_at=now - timedelta(days=2)
    )
    await produce(
        world.kafka,
        [(live.encode(), encode(stale))],
        signer=keys.signer(keys.COORDINATOR),
        topic=erased,
    )
    await produce(
        world.kafka, [(live.encode(), None)], signer=keys.signer(keys.COORDINATOR), topic=erased
    )

    assert _ask_in_a_fresh_process(world, ("user", "7"), ("user", "8"), ("user", "9")) == [
        False,
        True,
        False,
    ]
    async with world.engine.connect() as conn:
        left = list((await conn.execute(select(erased_entities.c.key))).scalars())
    assert left == [live]


def _order(order_id: str, user: int | None) -> dict[str, object]:
    return {
        "id": order_id,
        "user_id": None if user is None else str(user),
        "customer_name": "Imported Customer",
        "email": "imported@example.com",
        "address": "1 Upstream Road",
        "amount_cents": 1999,
        "currency": "EUR",
        "ordered_at": datetime(2026, 1, 5, tzinfo=UTC),
    }


class _BrokerDown:
    """A publisher whose broker never acknowledges: what a crash before the mark leaves."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, topic: str, records: object) -> None:
        raise ConnectionError("broker unreachable")


async def test_an_entry_is_not_lost_when_publishing_fails(world: World) -> None:
    suppression = Suppression(read_pepper(world.pepper_file), timedelta(days=1))
    async with world.engine.begin() as conn:
        key = await record_erased(conn, suppression, "user", "5", now=datetime.now(UTC))
    down = SuppressionPublisher(
        world.engine,
        world.kafka.topics,
        _BrokerDown(),
        keys.signer(keys.COORDINATOR),
        clock=SystemClock(),
    )
    with pytest.raises(ConnectionError):
        await down.publish_once()
    async with world.engine.connect() as conn:
        unpublished = await conn.scalar(
            select(erased_entities.c.key).where(erased_entities.c.published_at.is_(None))
        )
    assert unpublished == key  # rolled back with the failed send: sent again next pass
    assert await _publish(world, SystemClock()) == (1, 0)
    assert _ask_in_a_fresh_process(world, ("user", "5")) == [True]


async def test_a_bad_pepper_stops_an_erasure_before_anything_changes(
    world: World, tmp_path: Path
) -> None:
    short = tmp_path / "short.pepper"
    short.write_text("short\n")
    settings = world.settings.model_copy(update={"suppression_pepper_file": short})
    erasure = Erasure(
        world.engine, parse_policies(POLICIES, "erasure.yaml"), settings, SystemClock(), Metrics()
    )
    with pytest.raises(ErasureError, match="at least 32 bytes"):
        await erasure.create(
            subject=f"user:{ERASED}",
            regulation=Regulation.GDPR,
            received_at=None,
            reference=None,
            by="dpo@example.com",
        )
    async with world.engine.connect() as conn:
        kept = await conn.scalar(text(f"SELECT count(*) FROM er_accounts WHERE id = {ERASED}"))
        outboxed = await conn.scalar(
            text("SELECT coalesce(sum(events), 0) FROM retention_outbox_batches")
        )
    assert (kept, outboxed) == (1, 0)
