"""Headers the SDK puts on records it sends to the dead-letter topic.

A DLQ record keeps the original key, value and headers; these say why it is there.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DlqHeader", "DlqReason"]


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
    ATTEMPTS = "retention.dlq.attempts"
    """Handler attempts made (0 for poison records)."""
    ORIGINAL_TOPIC = "retention.dlq.original_topic"
    ORIGINAL_PARTITION = "retention.dlq.original_partition"
    ORIGINAL_OFFSET = "retention.dlq.original_offset"
    FAILED_AT = "retention.dlq.failed_at"
    """RFC 3339 UTC."""
    TRUNCATED = "retention.dlq.truncated"
    """Only on copies cut to fit the DLQ: what was cut, e.g. `value 2105096 bytes`."""
