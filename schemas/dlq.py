"""The dead-letter contract: the headers on every record sent to the DLQ topic.

A DLQ record keeps the original key, value and headers; these say why it is there.
The SDK (events it cannot decode or handle) and the tracker (acks it cannot decode)
write the same headers, so one reader understands every dead letter.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from schemas.codec import clip_text
from schemas.models import utc_now

__all__ = ["DlqHeader", "DlqReason", "dlq_headers"]


class DlqReason(StrEnum):
    POISON = "poison"
    """The record could not be decoded (bytes, JSON, schema, version, size)."""
    FAILED = "failed"
    """The handler failed on its last attempt; a `failed` ack was sent too."""
    BAD_SIGNATURE = "bad_signature"
    """Unsigned (under `required`), badly signed, or signed by an unknown key: never
    handed to a handler, never acked. The error header says which."""


class DlqHeader(StrEnum):
    REASON = "retention.dlq.reason"
    """`poison`, `failed` or `bad_signature`."""
    ERROR = "retention.dlq.error"
    """What went wrong, as text."""
    SERVICE = "retention.dlq.service"
    """Whose dead letter this is: every writer shares one DLQ topic, and the tools filter on
    this header (`retention dlq list --service`). Claimed, not proven (docs/protocol.md)."""
    ATTEMPTS = "retention.dlq.attempts"
    """Handler attempts made (0 for poison records)."""
    ORIGINAL_TOPIC = "retention.dlq.original_topic"
    ORIGINAL_PARTITION = "retention.dlq.original_partition"
    ORIGINAL_OFFSET = "retention.dlq.original_offset"
    FAILED_AT = "retention.dlq.failed_at"
    """RFC 3339 UTC."""
    TRUNCATED = "retention.dlq.truncated"
    """Only on copies cut to fit the DLQ: what was cut, e.g. `value 2105096 bytes`."""


def dlq_headers(
    original: Sequence[tuple[str, bytes]],
    *,
    topic: str,
    partition: int,
    offset: int,
    service: str,
    reason: DlqReason,
    error: str,
    attempts: int,
    truncated: str = "",
) -> list[tuple[str, bytes]]:
    """The original headers (ours replaced), then ours saying why the record is here."""
    ours = {
        DlqHeader.REASON: reason.value,
        DlqHeader.ERROR: error,
        DlqHeader.SERVICE: service,
        DlqHeader.ATTEMPTS: str(attempts),
        DlqHeader.ORIGINAL_TOPIC: topic,
        DlqHeader.ORIGINAL_PARTITION: str(partition),
        DlqHeader.ORIGINAL_OFFSET: str(offset),
        DlqHeader.FAILED_AT: utc_now().isoformat().replace("+00:00", "Z"),
    }
    if truncated:
        ours[DlqHeader.TRUNCATED] = truncated
    kept = [(k, v) for k, v in original if k not in set(ours)]
    return kept + [(k.value, clip_text(v)) for k, v in ours.items()]
