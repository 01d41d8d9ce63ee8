"""Forgeries (scenario 11) and the checks that each was refused and counted.

Acks, built from a run's real events by a seeded schedule, of seven kinds: unsigned from
a service nobody declared; unsigned, or signed with a key nobody declared, in a declared
service's name; a genuine signature moved onto another ack; and, signed with the
service's own key (a stolen key), acks for a type it does not handle, for another entity
and for an event that does not exist. Besides: events written straight to the events
topic (unsigned, foreign key, a real batch's signature and proof on another value, and
proof format v2 headers each one defect away from valid: a tampered sibling, another
tree's salt, a v1 root signature of the coordinator's key, a truncated value), for held
users; forged registrations and tombstones; verbatim replays of genuine acks.
`forgery_problems` checks the ack ledger's reasons, `retention_acks_rejected{reason}`,
`retention report` and that no forged service became an expected acknowledger.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from coordinator.outbox.lookup import EVENTS
from coordinator.store.tables import ack_ledger, expected_acks, service_registry
from schemas import (
    AckStatus,
    EventType,
    HandledEntity,
    KafkaSettings,
    RetentionAck,
    RetentionEvent,
    ServiceRegistration,
    decode,
    encode,
)
from schemas.signing import BATCH_HEADER, SIGNATURE_HEADER, Signer
from tests import keys
from tests.e2e.harness import Stack, run_cli, wait_for
from tests.faults.world import ENTITY_SERVICES

__all__ = [
    "KINDS",
    "forge_events",
    "forge_registrations",
    "forged_event_problems",
    "forgery_problems",
    "inject_forgeries",
    "registration_problems",
    "replay_genuine_acks",
    "wait_for_rejections",
]

STRANGERS = ("mallory", "eve", "Billing", "billing-shadow", "notifications ", "x" * 255)
MALLORY = keys.signer("mallory")
"""A key no policy file declares."""
KINDS = {
    "undeclared_service": "unknown_service",
    "unsigned": "bad_signature",
    "foreign_key": "bad_signature",
    "transplanted_signature": "bad_signature",
    "own_key_wrong_type": "unexpected_service",
    "own_key_wrong_entity": "entity_mismatch",
    "own_key_unknown_event": "unknown_event",
}

Headers = list[tuple[str, bytes]]
Event = tuple[uuid.UUID, str, str]


def _ack(
    rng: random.Random, event_id: uuid.UUID, service: str, entity_type: str, entity_id: str
) -> RetentionAck:
    status = rng.choice(list(AckStatus))
    return RetentionAck(
        event_id=event_id,
        service=service,
        entity_type=entity_type,
        entity_id=entity_id,
        status=status,
        records_affected=rng.randint(0, 9),
        detail="forged" if status is AckStatus.FAILED else "",
        attempt=rng.randint(1, 5),
        acknowledged_at=datetime.now(UTC) - timedelta(seconds=rng.randint(0, 3600)),
    )


def _signed(ack: RetentionAck, signer: Signer | None) -> tuple[RetentionAck, Headers]:
    key, value = ack.key.encode(), encode(ack)
    return ack, ([] if signer is None else signer.sign_record(key, value))


def _forge(rng: random.Random, events: list[Event], kind: str) -> tuple[RetentionAck, Headers]:
    everyone = set().union(*ENTITY_SERVICES.values())
    if kind == "own_key_wrong_type":
        # Only types some declared service does not handle (orders: billing alone).
        events = [e for e in events if ENTITY_SERVICES[e[1]] != everyone]
    event_id, entity_type, entity_id = rng.choice(events)
    service = rng.choice(sorted(ENTITY_SERVICES[entity_type]))
    if kind == "undeclared_service":
        return _signed(_ack(rng, event_id, rng.choice(STRANGERS), entity_type, entity_id), None)
    if kind == "unsigned":
        return _signed(_ack(rng, event_id, service, entity_type, entity_id), None)
    if kind == "foreign_key":
        return _signed(_ack(rng, event_id, service, entity_type, entity_id), MALLORY)
    own = keys.signer(service)
    if kind == "transplanted_signature":
        # The service's genuine signature over an ack for one event, carried by an ack for
        # another: the signature covers the bytes, not the header's company.
        _, genuine = _signed(_ack(rng, event_id, service, entity_type, entity_id), own)
        other = rng.choice([e for e in events if e[0] != event_id and e[1] == entity_type])
        return _ack(rng, other[0], service, entity_type, other[2]), genuine
    if kind == "own_key_wrong_type":
        stranger = rng.choice(sorted(everyone - ENTITY_SERVICES[entity_type]))
        return _signed(_ack(rng, event_id, stranger, entity_type, entity_id), keys.signer(stranger))
    if kind == "own_key_wrong_entity":
        other = rng.choice([e for e in events if e[2] != entity_id])
        if rng.random() < 0.5:
            entity_id = other[2]
        else:
            entity_type = rng.choice(sorted(set(ENTITY_SERVICES) - {entity_type}))
        return _signed(_ack(rng, event_id, service, entity_type, entity_id), own)
    unknown = uuid.UUID(int=rng.getrandbits(128))
    return _signed(_ack(rng, unknown, service, entity_type, entity_id), own)


async def _produce(
    kafka: KafkaSettings, topic: str, records: Sequence[tuple[bytes | None, bytes | None, Headers]]
) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, v, key=k, headers=h) for k, v, h in records]
        for future in sent:
            await future
    finally:
        await producer.stop()


async def _read(kafka: KafkaSettings, topic: str, *, at_least: int) -> list[object]:
    """Records of `topic` from its start (without a group), once `at_least` are there."""
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[object] = []
        for _ in range(100):
            batches = await consumer.getmany(timeout_ms=200)
            found.extend(m for messages in batches.values() for m in messages)
            if len(found) >= at_least and not batches:
                break
        return found
    finally:
        await consumer.stop()


async def _rejected(stack: Stack) -> Counter[str]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(ack_ledger.c.reject_reason, func.count())
                .where(~ack_ledger.c.accepted)
                .group_by(ack_ledger.c.reject_reason)
            )
            return Counter(dict(rows.all()))
    finally:
        await engine.dispose()


async def _published(stack: Stack) -> list[tuple[uuid.UUID, str, str]]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(EVENTS.c.event_id, EVENTS.c.entity_type, EVENTS.c.entity_id)
                .where(EVENTS.c.published_at.is_not(None))
                .order_by(EVENTS.c.event_id)
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]
    finally:
        await engine.dispose()


async def _services_recorded(stack: Stack) -> set[str]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            return set((await conn.scalars(select(expected_acks.c.service).distinct())).all())
    finally:
        await engine.dispose()


async def inject_forgeries(
    stack: Stack, rng: random.Random, n: int
) -> tuple[Counter[str], set[RetentionAck]]:
    """Produce `n` forged acks in seeded bursts; the reasons they must get, and them."""
    events = [e for e in await _published(stack) if e[1] in ENTITY_SERVICES]
    assert len(events) > 10
    kinds = [rng.choice(sorted(KINDS)) for _ in range(n)]
    fakes = [_forge(rng, events, kind) for kind in kinds]
    chunks = rng.randint(3, 6)
    for part in range(chunks):
        records = [(a.key.encode(), encode(a), h) for a, h in fakes[part::chunks]]
        await _produce(stack.kafka, stack.kafka.topics.acks, records)
        await asyncio.sleep(rng.uniform(0, 0.3))
    return Counter(KINDS[k] for k in kinds), {a for a, _ in fakes}


async def replay_genuine_acks(
    stack: Stack, rng: random.Random, n: int, fakes: set[RetentionAck]
) -> int:
    """Re-send `n` of the services' own ack records verbatim (headers included): each is
    a duplicate of an ack already applied, so nothing may change."""
    genuine = [
        m
        for m in await _read(stack.kafka, stack.kafka.topics.acks, at_least=n)
        if any(k == SIGNATURE_HEADER for k, _ in m.headers or ())  # type: ignore[attr-defined]
        and decode(RetentionAck, m.value) not in fakes  # type: ignore[attr-defined]
    ]
    chosen = rng.sample(genuine, min(n, len(genuine)))
    await _produce(
        stack.kafka,
        stack.kafka.topics.acks,
        [(m.key, m.value, list(m.headers)) for m in chosen],  # type: ignore[attr-defined]
    )
    return len(chosen)


@dataclass(frozen=True, slots=True)
class ForgedEvents:
    event_ids: set[uuid.UUID]
    records: int


async def forge_events(stack: Stack, rng: random.Random, users: Sequence[str]) -> ForgedEvents:
    """Delete events for `users` (held ones: nothing may touch them) written straight to
    the events topic: unsigned, signed with a foreign key, carrying a real record's
    signature and proof, or a proof format v2 header one defect away from what the
    coordinator's key would have signed (see `_one_defect_v2`). No service may act on or
    acknowledge any of them."""
    real = await _read(stack.kafka, stack.kafka.topics.events, at_least=1)
    borrowed = list(real[0].headers)  # type: ignore[attr-defined]
    records: list[tuple[bytes | None, bytes | None, Headers]] = []
    ids = set()
    for n, user in enumerate(users):
        event = RetentionEvent(
            event_id=uuid.UUID(int=rng.getrandbits(128)),
            type=EventType.DELETE,
            entity_type="user",
            entity_id=user,
            policy="inactive_users",
            legal_basis="forged",
            initiated_at=datetime.now(UTC),
            deadline=datetime.now(UTC) + timedelta(days=1),
            run_id=uuid.UUID(int=rng.getrandbits(128)),
        )
        ids.add(event.event_id)
        key, value = event.key.encode(), encode(event)
        kind = n % (3 + len(V2_DEFECTS))
        if kind < 3:
            headers = [[], MALLORY.sign_record(key, value), borrowed][kind]
        else:
            headers = _one_defect_v2(rng, key, value, V2_DEFECTS[kind - 3])
        records.append((key, value, headers))
    await _produce(stack.kafka, stack.kafka.topics.events, records)
    return ForgedEvents(ids, len(records))


V2_DEFECTS = ("tampered_sibling", "swapped_salt", "v1_root_signature", "truncated")


def _one_defect_v2(rng: random.Random, key: bytes, value: bytes, defect: str) -> Headers:
    """A `retention-batch` header for this record that the coordinator's key genuinely
    signed (a tree of the record and a decoy), then changed by one `defect`: a sibling's
    byte flipped, the salt of another tree, the coordinator's genuine v1 root signature
    of the same records in place of the v2 one, or its last byte cut. The genuine header
    is never sent."""
    coordinator = keys.signer(keys.COORDINATOR)
    pairs: list[tuple[bytes | None, bytes | None]] = [(key, value), (key, value + b" ")]
    [[(name, genuine)], _] = coordinator.sign_batch_v2(pairs)
    assert name == BATCH_HEADER
    if defect == "tampered_sibling":
        at = rng.randrange(94, len(genuine))
        forged = genuine[:at] + bytes([genuine[at] ^ 1]) + genuine[at + 1 :]
    elif defect == "swapped_salt":
        [[(_, other)], _] = coordinator.sign_batch_v2(pairs)
        forged = genuine[:73] + other[73:89] + genuine[89:]
    elif defect == "v1_root_signature":
        v1 = base64.b64decode(coordinator.sign_batch(pairs)[0][0][1].split(b":", 1)[1])
        forged = genuine[:9] + v1 + genuine[73:]
    else:
        forged = genuine[:-1]
    return [(BATCH_HEADER, forged)]


async def forge_registrations(stack: Stack, services: Sequence[str]) -> int:
    """Tombstones (unsigned) and empty registrations (foreign key) in declared services'
    names: refused; plus one from an undeclared service: kept as drift. Returns how many
    must be refused."""
    records: list[tuple[bytes | None, bytes | None, Headers]] = []
    for service in services:
        records.append((service.encode(), None, []))
        empty = ServiceRegistration(
            service=service,
            handles=[HandledEntity(entity_type="nothing", actions=[EventType.DELETE])],
            sdk_version="forged",
            registered_at=datetime.now(UTC) + timedelta(days=1),
        )
        key, value = service.encode(), encode(empty)
        records.append((key, value, MALLORY.sign_record(key, value)))
    stranger = ServiceRegistration(
        service="mallory",
        handles=[HandledEntity(entity_type="user", actions=[EventType.DELETE])],
        sdk_version="forged",
        registered_at=datetime.now(UTC),
    )
    records.append(
        (b"mallory", encode(stranger), MALLORY.sign_record(b"mallory", encode(stranger)))
    )
    await _produce(stack.kafka, stack.kafka.topics.services, records)
    return 2 * len(services)


async def wait_for_rejections(stack: Stack, want: Counter[str], alive: Callable[[], None]) -> None:
    async def done() -> bool:
        return await _rejected(stack) == want

    await wait_for(done, timeout_s=60, what=f"rejections {dict(want)}", alive=alive)


async def forgery_problems(
    stack: Stack, registry: CollectorRegistry, want: Counter[str]
) -> list[str]:
    """Where the rejections are not as `want` says: ledger, metric, report, registry."""
    metric = Counter(
        {
            reason: int(
                registry.get_sample_value("retention_acks_rejected_total", {"reason": reason}) or 0
            )
            for reason in set(KINDS.values())
        }
    )
    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    result = await run_cli(stack, "report", "--since", since, "--json")
    if result.returncode != 0:
        return [f"retention report exited {result.returncode}: {result.stderr}"]
    by_reason: Counter[str] = Counter()
    for row in json.loads(result.stdout)["rejected_acks"]:
        by_reason[row["reason"]] += row["count"]
    problems = []
    for name, found in (
        ("ledger", await _rejected(stack)),
        ("metric", +metric),
        ("report", by_reason),
    ):
        if found != want:
            problems.append(f"{name}: rejections {dict(found)}, want {dict(want)}")
    recorded = await _services_recorded(stack)
    if recorded != set().union(*ENTITY_SERVICES.values()):
        problems.append(f"services with recorded acks: {sorted(recorded)}")
    return problems


async def forged_event_problems(
    stack: Stack, forged: ForgedEvents, services: Sequence[str]
) -> list[str]:
    """Each service dead-lettered every forged event as `bad_signature`, and nobody acked."""
    letters = await _read(
        stack.kafka, stack.kafka.topics.dlq, at_least=forged.records * len(services)
    )
    refused: Counter[str] = Counter()
    for letter in letters:
        # The original record's headers come along, `retention-batch` binary among them.
        headers = {k: v.decode("utf-8", "replace") for k, v in letter.headers or ()}  # type: ignore[attr-defined]
        if headers.get("retention.dlq.reason") == "bad_signature":
            refused[headers["retention.dlq.service"]] += 1
    problems = [
        f"{service}: {refused[service]} forged events dead-lettered, want {forged.records}"
        for service in services
        if refused[service] != forged.records
    ]
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            acked = await conn.scalar(
                select(func.count())
                .select_from(ack_ledger)
                .where(ack_ledger.c.event_id.in_(forged.event_ids))
            )
    finally:
        await engine.dispose()
    if acked:
        problems.append(f"{acked} acks for forged events")
    return problems


async def registration_problems(
    stack: Stack, registry: CollectorRegistry, refused: int, declared: Sequence[str]
) -> list[str]:
    """Forged registrations and tombstones refused and counted; the real ones stand."""
    counted = registry.get_sample_value(
        "retention_registrations_rejected_total", {"reason": "bad_signature"}
    )
    problems = [] if counted == refused else [f"{counted} registrations refused, want {refused}"]
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            r = service_registry.c
            rows = (await conn.execute(select(r.service, r.entity_type, r.retired_at))).all()
    finally:
        await engine.dispose()
    for service in declared:
        mine = [row for row in rows if row.service == service]
        if not mine or any(row.retired_at is not None for row in mine):
            problems.append(f"{service}: registration retired or gone: {mine}")
        if any(row.entity_type == "nothing" for row in mine):
            problems.append(f"{service}: a forged registration was applied")
    if not any(row.service == "mallory" for row in rows):
        problems.append("the undeclared registration is not shown (drift)")
    return problems
