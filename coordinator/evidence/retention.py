"""How long each of the coordinator's own tables keeps its rows (SPEC §13).

Apart from the pruning code so that the settings can name it without importing what
pruning needs (the outbox, the holds, the vault).
"""

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
