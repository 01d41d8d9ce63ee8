"""Seeded garbage for the events and acks topics: every way a record can be unreadable.

`poison(rng, base, n)` mutates one valid wire document into `n` records of the kinds in
`KINDS`, chosen by `rng`, each with the key it is produced under. Every one of them must
be refused by `schemas.decode` (the generator checks that itself, so a kind that turns
out to be readable fails loudly here rather than skewing a scenario's counts).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas import (
    MAX_RECORD_BYTES,
    AckStatus,
    EventType,
    HandledEntity,
    KafkaSettings,
    PoisonRecord,
    RetentionAck,
    RetentionEvent,
    ServiceRegistration,
    decode,
    encode,
)
from schemas.models import WireModel
from schemas.signing import Signer

__all__ = [
    "BROKER_SIZED",
    "GIANT_BYTES",
    "KINDS",
    "Poison",
    "allow_giant_records",
    "base_ack",
    "base_event",
    "base_registration",
    "counts",
    "poison",
    "produce_raw",
]

GIANT_BYTES = 2 * 1024 * 1024
"""Records past the broker's default limit; topics that carry them get a larger one."""
BROKER_SIZED = MAX_RECORD_BYTES + 40_000
"""Past our MAX_RECORD_BYTES, under the broker's default max.message.bytes (1,048,588)."""
TOPIC_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Poison:
    kind: str
    key: bytes | None
    value: bytes | None


Document = dict[str, Any]


def base_event() -> Document:
    now = datetime.now(UTC)
    event = RetentionEvent(
        event_id=uuid.uuid4(),
        type=EventType.DELETE,
        entity_type="user",
        entity_id="garbage-user",
        policy="inactive_users",
        legal_basis="Storage limitation",
        initiated_at=now,
        deadline=now + timedelta(days=30),
    )
    return json.loads(encode(event))  # type: ignore[no-any-return]


def base_registration() -> Document:
    registration = ServiceRegistration(
        service="garbage-service",
        handles=[HandledEntity(entity_type="user", actions=[EventType.DELETE])],
        sdk_version="0.1.0",
        registered_at=datetime.now(UTC),
    )
    return json.loads(encode(registration))  # type: ignore[no-any-return]


def base_ack() -> Document:
    ack = RetentionAck(
        event_id=uuid.uuid4(),
        service="billing",
        entity_type="user",
        entity_id="garbage-user",
        status=AckStatus.COMPLETED,
        records_affected=1,
        acknowledged_at=datetime.now(UTC),
    )
    return json.loads(encode(ack))  # type: ignore[no-any-return]


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


WRONG_TYPES: dict[str, list[Any]] = {
    "event_id": [12345, "not-a-uuid", None, ["a"]],
    "type": ["shred", 1, None],
    "status": ["done", True, None],
    "entity_type": ["", 7, {"a": 1}],
    "entity_id": [1001, "", None, "x" * 300],
    "initiated_at": ["yesterday", 1_700_000_000, "2026-01-01T00:00:00"],
    "deadline": ["soon", 1.5],
    "acknowledged_at": ["now", 0],
    "records_affected": [-1, "3", 2.5],
    "attempt": [0, "1"],
    "fields": ["email", [1, 2]],
    "schema_version": ["1", 0, -3, 1.0],
    "service": ["", 42],
    "policy": ["", None],
}


def _not_json(rng: random.Random, base: Document) -> bytes:
    text = _dumps(base)
    return text[: rng.randrange(1, len(text) - 1)]  # cut anywhere: never a whole object


def _not_utf8(rng: random.Random, base: Document) -> bytes:
    text = _dumps(base)
    at = text.index(b'"', rng.randrange(len(text) // 2)) + 1
    return text[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]) + text[at:]


def _missing_field(rng: random.Random, base: Document) -> bytes:
    # Optional on read (SPEC §3, §11): dropping one leaves a valid record, not garbage.
    optional = (
        "schema_version",
        "fields",
        "detail",
        "attempt",
        "run_id",
        "reason",
        "request_id",
        "subject",
    )
    required = [k for k in base if k not in optional]
    document = dict(base)
    for key in rng.sample(required, rng.randint(1, 3)):
        del document[key]
    return _dumps(document)


def _wrong_type(rng: random.Random, base: Document) -> bytes:
    key = rng.choice([k for k in base if k in WRONG_TYPES])
    return _dumps({**base, key: rng.choice(WRONG_TYPES[key])})


def _newer_schema(rng: random.Random, base: Document) -> bytes:
    return _dumps({**base, "schema_version": rng.randint(2, 10_000)})


def _not_an_object(rng: random.Random, base: Document) -> bytes:
    return rng.choice([_dumps([base]), b"null", b"42", b'"text"', b"true", b"[]"])


def _nan(rng: random.Random, base: Document) -> bytes:
    return _dumps(base).replace(b'"schema_version": 1', b'"schema_version": NaN', 1)


def _deep(rng: random.Random, base: Document) -> bytes:
    depth = rng.randint(50_000, 150_000)
    return b"[" * depth + b"]" * depth


def _oversized(rng: random.Random, base: Document) -> bytes:
    pad = BROKER_SIZED - len(_dumps(base)) - rng.randrange(1000)
    return _dumps({**base, "detail": "x" * pad})


def _giant(rng: random.Random, base: Document) -> bytes:
    return _dumps({**base, "detail": "y" * (GIANT_BYTES + rng.randrange(100_000))})


UNSTORABLE: dict[str, list[Any]] = {
    # Each passed validation once, then failed in a reader (issue 14).
    "initiated_at": ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"],
    "deadline": ["0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z"],
    "acknowledged_at": ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"],
    "entity_id": ["a\x00b", "é" * 256],
    "entity_type": ["user\x00"],
    "service": ["\x00", "s" * 256],
    "policy": ["p\x00"],
    "legal_basis": ["\x00", "l" * 5000],
    "detail": ["email=alice@example.com \x00", "d" * 10_000],
    "records_affected": [2**63, 10**30],
    "attempt": [2**31, 2**40],
    "fields": [["email\x00"], ["f"] * 1000],
    "registered_at": ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"],
    "sdk_version": ["0.1\x00", "v" * 300],
}
"""Values that are well-typed JSON but that PostgreSQL or datetime can't take."""


def _unstorable(rng: random.Random, base: Document) -> bytes:
    key = rng.choice([k for k in base if k in UNSTORABLE])
    if rng.random() < 0.8:
        return json.dumps({**base, key: rng.choice(UNSTORABLE[key])}).encode()
    # A lone surrogate, raw: invalid UTF-8 once encoded with surrogatepass.
    return json.dumps({**base, "entity_id": "\ud800"}, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def _empty(rng: random.Random, base: Document) -> bytes:
    return rng.choice([b"", b" ", b"\n", b"\x00"])


Mutation = Callable[[random.Random, Document], bytes | None]

KINDS: dict[str, Mutation] = {
    "not_json": _not_json,
    "not_utf8": _not_utf8,
    "missing_field": _missing_field,
    "wrong_type": _wrong_type,
    "newer_schema": _newer_schema,
    "not_an_object": _not_an_object,
    "nan": _nan,
    "deep_nesting": _deep,
    "empty_value": _empty,
    "tombstone": lambda rng, base: None,
    "unstorable": _unstorable,
}
"""Cheap kinds, mixed freely; the two large ones are added in fixed small numbers."""


def _key(rng: random.Random) -> bytes | None:
    return rng.choice([b"user:garbage", b"", None, uuid.uuid4().bytes, b"\xff\xfe"])


def poison(
    rng: random.Random,
    model: type[WireModel],
    base: Document,
    n: int,
    *,
    oversized: int = 0,
    giant: int = 0,
    kinds: Sequence[str] = (),
) -> list[Poison]:
    """`n` unreadable records of mixed kinds (all of KINDS, or `kinds`), `oversized` and
    `giant` of them large."""
    records = [Poison("oversized", _key(rng), _oversized(rng, base)) for _ in range(oversized)]
    records += [Poison("giant", _key(rng), _giant(rng, base)) for _ in range(giant)]
    names = sorted(kinds or KINDS)
    while len(records) < n:
        kind = rng.choice(names)
        value = KINDS[kind](rng, base)
        # A record needs a key or a value: a tombstone without a key cannot be produced.
        key = _key(rng) if value is not None else b"user:tombstone"
        records.append(Poison(kind, key, value))
    for record in records:
        try:
            decode(model, record.value)
        except PoisonRecord:
            continue
        raise AssertionError(f"{record.kind} garbage decodes as {model.__name__}: {record}")
    rng.shuffle(records)
    return records


def counts(records: Sequence[Poison]) -> Counter[str]:
    return Counter(r.kind for r in records)


async def allow_giant_records(kafka: KafkaSettings, topics: Sequence[str]) -> None:
    """Raise `max.message.bytes` on these topics, as a deployment may have."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(TOPIC_MAX_BYTES)}
                )
                for topic in topics
            ]
        )
    finally:
        await admin.close()


async def produce_raw(
    kafka: KafkaSettings,
    topic: str,
    records: Sequence[Poison | tuple[bytes | None, bytes]],
    *,
    signer: Signer | None = None,
) -> None:
    """Raw records in order, as a misbehaving producer would send them; with `signer`,
    signed as that key's owner would (garbage the coordinator itself sent, to reach the
    decoders behind the signature check)."""
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(), acks="all", max_request_size=TOPIC_MAX_BYTES + 1024
    )
    await producer.start()
    try:
        sent = []
        for record in records:
            key, value = (record.key, record.value) if isinstance(record, Poison) else record
            headers = [] if signer is None else signer.sign_record(key, value)
            sent.append(await producer.send(topic, value, key=key, headers=headers))
        for future in sent:
            await future
    finally:
        await producer.stop()
