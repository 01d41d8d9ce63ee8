"""Every table the coordinator owns, in one SQLAlchemy `MetaData` (migrations mirror it)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

__all__ = [
    "anonymized",
    "audit_log",
    "legal_hold_entities",
    "legal_holds",
    "metadata",
    "outbox",
    "policy_results",
    "runs",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(name: str, *, nullable: bool = True, now: bool = False) -> Column[object]:
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if now else None,
    )


legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    _ts("created_at", nullable=False, now=True),
    _ts("expires_at"),
    _ts("released_at"),
    Column("released_by", Text),
)

legal_hold_entities = Table(
    "legal_hold_entities",
    metadata,
    Column("hold_id", Text, ForeignKey("legal_holds.id"), primary_key=True),
    Column("entity_type", Text, primary_key=True),
    Column("entity_id", Text, primary_key=True),
    # The planner's NOT EXISTS probes by (entity_type, entity_id).
    Index(None, "entity_type", "entity_id", "hold_id"),
)

runs = Table(
    "retention_runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    _ts("started_at", nullable=False, now=True),
    _ts("finished_at"),
    Column("status", Text, nullable=False, server_default=text("'running'")),
    Column("trigger", Text, nullable=False, server_default=text("'cli'")),
    Column("forced", Boolean, nullable=False, server_default=text("false")),
    Column("dry_run", Boolean, nullable=False, server_default=text("false")),
)

policy_results = Table(
    "retention_policy_results",
    metadata,
    Column("run_id", Uuid, ForeignKey("retention_runs.id"), primary_key=True),
    Column("policy", Text, primary_key=True),
    Column("action", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("processed", BigInteger, nullable=False, server_default=text("0")),
    Column("held", BigInteger, nullable=False, server_default=text("0")),
    Column("events", BigInteger, nullable=False, server_default=text("0")),
    Column("duration_s", Float, nullable=False, server_default=text("0")),
    Column("oldest_unprocessed_days", Float),
    _ts("cutoff"),
    Column("errors", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _ts("started_at", nullable=False, now=True),
    _ts("finished_at"),
)

# Which rows an anonymize policy has already rewritten, and which fields it covered:
# the planner skips them, so a rerun neither rewrites a row nor publishes a second event.
# A policy that gains a field re-plans its old rows once (`fields @>` no longer holds).
anonymized = Table(
    "retention_anonymized",
    metadata,
    Column("policy", Text, primary_key=True),
    Column("entity_id", Text, primary_key=True),
    Column("fields", ARRAY(Text), nullable=False),
    Column("run_id", Uuid, nullable=False),
    _ts("anonymized_at", nullable=False),
)

# The transactional outbox: one row per RetentionEvent, written in the purge batch's
# transaction, so an event exists exactly when its local purge committed.
outbox = Table(
    "retention_outbox",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("run_id", Uuid),
    Column("policy", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("legal_basis", Text, nullable=False),
    Column("fields", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _ts("initiated_at", nullable=False),
    _ts("deadline", nullable=False),
    _ts("created_at", nullable=False, now=True),
    _ts("published_at"),
    Column("publish_attempts", Integer, nullable=False, server_default=text("0")),
    Index(None, "entity_type", "entity_id"),
    # The relay's claim query scans only what is still unpublished.
    Index(
        "ix_retention_outbox_unpublished",
        "created_at",
        postgresql_where=text("published_at IS NULL"),
    ),
)

# Append-only hash chain (see coordinator/audit.py); seq is assigned under a lock, not
# by a sequence, so gaps can only come from deletion — which verification reports.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    _ts("at", nullable=False),
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Index(None, "action"),
)
