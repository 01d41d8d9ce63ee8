"""How long the coordinator keeps its own data (SPEC §13), apart from the pruning itself:
the settings build it without importing what pruning reads (outbox, holds, Kafka)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Retention"]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each of the coordinator's own tables keeps its rows."""

    outbox: timedelta
    ack_ledger: timedelta
    event_status: timedelta
    audit: timedelta
