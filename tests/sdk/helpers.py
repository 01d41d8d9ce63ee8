"""Events for SDK tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from schemas import EventType, RetentionEvent


def event(
    entity_id: str = "42",
    *,
    entity_type: str = "user",
    action: EventType = EventType.DELETE,
    event_id: uuid.UUID | None = None,
) -> RetentionEvent:
    now = datetime.now(UTC)
    return RetentionEvent(
        event_id=event_id or uuid.uuid4(),
        type=action,
        entity_type=entity_type,
        entity_id=entity_id,
        policy="test_policy",
        legal_basis="Test",
        initiated_at=now,
        deadline=now + timedelta(days=30),
        fields=["email"] if action is EventType.ANONYMIZE else [],
    )
