"""Wire models, topic names and codecs shared by every side of retention-fanout."""

from schemas.codec import (
    MAX_RECORD_BYTES,
    DeadLetter,
    PoisonRecord,
    clip_text,
    dead_letter,
    decode,
    encode,
)
from schemas.database import DEFAULT_DATABASE_URL, async_database_url, is_disconnect
from schemas.errors import error_text
from schemas.kafka import KafkaSettings
from schemas.models import (
    HANDLED_ACTIONS,
    SCHEMA_VERSION,
    VERIFY_STATUSES,
    AckStatus,
    EventReason,
    EventType,
    HandledEntity,
    HoldRecord,
    RetentionAck,
    RetentionEvent,
    ServiceRegistration,
    utc_now,
)
from schemas.retries import RetryPolicy, Stopped, is_transient, retry
from schemas.topics import DEFAULT_PREFIX, Topics, service_group

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_PREFIX",
    "HANDLED_ACTIONS",
    "MAX_RECORD_BYTES",
    "SCHEMA_VERSION",
    "VERIFY_STATUSES",
    "AckStatus",
    "DeadLetter",
    "EventReason",
    "EventType",
    "HandledEntity",
    "HoldRecord",
    "KafkaSettings",
    "PoisonRecord",
    "RetentionAck",
    "RetentionEvent",
    "RetryPolicy",
    "ServiceRegistration",
    "Stopped",
    "Topics",
    "async_database_url",
    "clip_text",
    "dead_letter",
    "decode",
    "encode",
    "error_text",
    "is_disconnect",
    "is_transient",
    "retry",
    "service_group",
    "utc_now",
]
