"""The dead-letter topic: read it with its reasons, and re-drive genuine events.

Every writer (SDK, Faust adapter, tracker) dead-letters into the one `<prefix>.dlq` topic
with the headers of `schemas.dlq`, the service among them (docs/protocol.md says why one
topic and not one per service). Anyone who may write the DLQ can claim any service in that
header, so nothing here trusts it beyond filtering: a record is re-driven only when its
bytes carry a valid coordinator signature, it came from the events topic, and the
coordinator still keeps the event's evidence. Then the *stored* event is sent again
(`Republisher.send`: same id, signed anew, held entities skipped, audited `dlq_redriven`).
Everything else is reported with why it was left. Kafka records cannot be deleted, so a
re-driven record stays in the DLQ; re-driving it again sends a repeat the services absorb.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.kafka.admin import missing_topics
from coordinator.kafka.clients import KafkaTopicReader
from coordinator.kafka.ports import ConsumedRecord
from coordinator.operations.republish import BATCH, Outcome, Republisher
from coordinator.outbox.lookup import events_by
from schemas import KafkaSettings, RetentionEvent, decode
from schemas.dlq import DlqHeader
from schemas.signing import SignatureSettings, Signer, Verifier

__all__ = [
    "MAX_GROUPS",
    "OTHERS",
    "SHOWN_BYTES",
    "SHOWN_HEADERS",
    "DeadLetter",
    "Left",
    "Listing",
    "Redriven",
    "coordinator_keys",
    "dead_letters",
    "redrive",
    "select_letters",
]


SHOWN_HEADERS: tuple[str, ...] = (*DlqHeader, "event_id")
"""The headers a listing shows (`DeadLetter.as_dict`)."""
SHOWN_BYTES = 256
"""What a listing keeps of each shown header: legitimate ones (service, reason, an error
class, a topic, a time) are far shorter; the DLQ's writer chooses their size."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: datetime
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        """The last header `name`, as printable text: whoever wrote the DLQ chose these
        bytes, and they end up on an operator's terminal (escape sequences included)."""
        for k, v in reversed(self.headers):
            if k == name:
                text = v.decode("utf-8", "replace")
                return "".join(c if c.isprintable() else "\ufffd" for c in text)
        return ""

    @property
    def service(self) -> str:
        return self.header(DlqHeader.SERVICE)

    @property
    def reason(self) -> str:
        return self.header(DlqHeader.REASON)

    @property
    def event_id(self) -> str:
        """What the record's `event_id` header claims (the relay sets it); may be empty."""
        return self.header("event_id")

    def listed(self) -> DeadLetter:
        """What a listing keeps of the letter: no key or value, and of the headers only
        the last of each shown one, cut to `SHOWN_BYTES` (the writer chose their number
        and size)."""
        last = dict(self.headers)
        kept = tuple((name, last[name][:SHOWN_BYTES]) for name in SHOWN_HEADERS if name in last)
        return DeadLetter(self.partition, self.offset, self.timestamp, None, None, kept)

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp.isoformat(),
            # No record key: an event's is `type:id`, and listings never name a person.
            "event_id": self.event_id or None,
            "service": self.service,
            "reason": self.reason,
            "error": self.header(DlqHeader.ERROR),
            "attempts": self.header(DlqHeader.ATTEMPTS),
            "original_topic": self.header(DlqHeader.ORIGINAL_TOPIC),
            "failed_at": self.header(DlqHeader.FAILED_AT),
            "truncated": self.header(DlqHeader.TRUNCATED) or None,
        }


def _letter(record: ConsumedRecord) -> DeadLetter:
    return DeadLetter(
        record.partition,
        record.offset,
        datetime.fromtimestamp(record.timestamp_ms / 1000, UTC),
        record.key,
        record.value,
        record.headers,
    )


@asynccontextmanager
async def dead_letters(
    kafka: KafkaSettings, *, timeout_s: float = 60.0
) -> AsyncIterator[AsyncIterator[list[DeadLetter]]]:
    """The records in the DLQ topic now, a fetch at a time (oldest first per partition):
    anyone can write the topic, so it may hold far more than fits in memory.

    Raises:
        LookupError: the topic does not exist.
        TimeoutError: it could not be read to its end in time (raised while iterating).
    """
    # aiokafka would wait for a missing topic's metadata, logging each retry, then fail.
    if await missing_topics(kafka, [kafka.topics.dlq]):
        raise LookupError(f"topic {kafka.topics.dlq} does not exist (`retention serve` creates it)")
    reader = KafkaTopicReader(kafka, kafka.topics.dlq)
    await reader.start(timeout_s=timeout_s)

    async def chunks() -> AsyncIterator[list[DeadLetter]]:
        async for records in reader.chunks_to_end(timeout_s=timeout_s):
            yield [_letter(r) for r in records]

    try:
        yield chunks()
    finally:
        await reader.stop()


MAX_GROUPS = 1000
"""(service, reason) pairs `dlq list` counts apart; any later pair is counted in `OTHERS`
(both are header values whoever writes the DLQ chooses, a new one per record if it likes)."""
OTHERS = ("(others)", "(others)")


@dataclass(slots=True)
class Listing:
    """What `dlq list` shows of a topic of any size: whole counts per (service, reason)
    with the oldest and newest record, and the first `keep` records themselves."""

    keep: int
    groups: dict[tuple[str, str], tuple[int, datetime, datetime]] = field(default_factory=dict)
    records: list[DeadLetter] = field(default_factory=list)
    total: int = 0

    def add(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            d = letter.listed()
            self.total += 1
            if len(self.records) < self.keep:
                self.records.append(d)
            group = (d.service, d.reason)
            if group not in self.groups and len(self.groups) >= MAX_GROUPS:
                group = OTHERS
            if (seen := self.groups.get(group)) is None:
                self.groups[group] = (1, d.timestamp, d.timestamp)
            else:
                n, oldest, newest = seen
                self.groups[group] = (n + 1, min(oldest, d.timestamp), max(newest, d.timestamp))

    @property
    def truncated(self) -> bool:
        return self.total > len(self.records)


def select_letters(
    letters: Iterable[DeadLetter],
    *,
    service: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
) -> list[DeadLetter]:
    return [
        d
        for d in letters
        if (service is None or d.service == service)
        and (reason is None or d.reason == reason)
        and (since is None or d.timestamp >= since)
    ]


def coordinator_keys(signatures: SignatureSettings, signer: Signer | None) -> Verifier | None:
    """What proves an event genuine: this coordinator's own key and the keys services are
    told to trust (`RETENTION_COORDINATOR_PUBLIC_KEYS`, older ones during a rotation).
    None when there is neither: nothing can be re-driven then. The keys are read, and
    records checked (`Verifier.verify`), exactly as the SDK checks events."""
    keys = signatures.trusted_coordinator_keys()
    if signer is not None:
        keys.append(signer.public)
    return Verifier(keys) if keys else None


class Left(StrEnum):
    """Why a dead letter was not re-driven."""

    NOT_AN_EVENT = "not_an_event"
    """It did not come from the events topic (e.g. an ack the tracker could not read)."""
    NOT_SIGNED_BY_COORDINATOR = "not_signed_by_coordinator"
    """No valid coordinator signature over its bytes (forged, altered or truncated)."""
    UNDECODABLE = "undecodable"
    """Signed, yet no event this coordinator can read (a newer schema version)."""
    NOT_IN_EVIDENCE = "not_in_evidence"
    """The coordinator no longer keeps (or never published) this event."""
    HELD = "held"
    """An active legal hold covers the entity or its subject now."""


@dataclass(slots=True)
class Redriven:
    """What a re-drive did, over as many chunks as the topic takes: whole counts, and
    the first `keep` sent ids and left records."""

    keep: int = 1000
    sent: list[uuid.UUID] = field(default_factory=list)
    left: list[tuple[DeadLetter, Left]] = field(default_factory=list)
    sent_total: int = 0
    left_counts: Counter[tuple[Left, str]] = field(default_factory=Counter)

    def add_sent(self, ids: Iterable[uuid.UUID]) -> None:
        for event_id in ids:
            self.sent_total += 1
            if len(self.sent) < self.keep:
                self.sent.append(event_id)

    def add_left(self, letters: Iterable[DeadLetter], why: Left) -> None:
        for letter in letters:
            self.left_counts[why, letter.service] += 1
            if len(self.left) < self.keep:
                self.left.append((letter.listed(), why))

    @property
    def left_total(self) -> int:
        return sum(self.left_counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": [str(i) for i in self.sent],
            "sent_total": self.sent_total,
            "left": [{**d.as_dict(), "left_because": why.value} for d, why in self.left],
            "left_total": self.left_total,
            "truncated": self.sent_total > len(self.sent) or self.left_total > len(self.left),
        }


async def redrive(
    letters: Sequence[DeadLetter],
    *,
    engine: AsyncEngine,
    republisher: Republisher,
    verifier: Verifier,
    events_topic: str,
    actor: str,
    audit_data: dict[str, Any],
    now: datetime,
    done: Redriven,
) -> None:
    """Send the genuine events among `letters` (one chunk of the topic) again, from the
    coordinator's evidence, adding what happened to `done`."""
    wanted: dict[uuid.UUID, list[DeadLetter]] = {}
    for letter in letters:
        if letter.header(DlqHeader.ORIGINAL_TOPIC) != events_topic:
            done.add_left([letter], Left.NOT_AN_EVENT)
            continue
        if not verifier.verify(letter.key, letter.value, letter.headers).valid:
            done.add_left([letter], Left.NOT_SIGNED_BY_COORDINATOR)
            continue
        try:
            event = decode(RetentionEvent, letter.value)
        except ValueError:  # PoisonRecord, pydantic's ValidationError
            done.add_left([letter], Left.UNDECODABLE)
            continue
        wanted.setdefault(event.event_id, []).append(letter)
    if not wanted:
        return
    async with engine.connect() as conn:
        stored = await events_by(conn, now=now, event_ids=sorted(wanted))
    found = {s.event.event_id for s in stored}
    for event_id, copies in wanted.items():
        if event_id not in found:
            done.add_left(copies, Left.NOT_IN_EVIDENCE)
    outcome = Outcome(keep=None)
    for start in range(0, len(stored), BATCH):
        await republisher.send(
            stored[start : start + BATCH],
            outcome,
            actor=actor,
            reason="redrive",
            audit_data=audit_data,
            action=audit.AuditAction.DLQ_REDRIVEN,
        )
    for event_id in outcome.held:
        done.add_left(wanted[event_id], Left.HELD)
    done.add_sent(outcome.sent)
