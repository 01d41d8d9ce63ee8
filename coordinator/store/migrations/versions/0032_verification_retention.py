"""verification records in the system's own retention (SPEC §13): their publication time
kept past the outbox, their entity ids pseudonymised

Revision ID: 0032_verification_retention
Revises: 0031_audit_link
Create Date: 2026-12-07 10:30:00.000000

`retention db prune` now removes a verify event's outbox batch past the outbox retention;
the verification views read its publication time from the outbox, so
`retention_verifications.published_at` keeps it, written when the batch is pruned (NULL
before: the views read the outbox). `pseudonymised_at` marks the rows whose entity id is
already an HMAC, and the partial index lists those still in clear, so the daily run
reads only the new ones. Nothing is converted: rows written before are handled by the
next prune. Both columns are nullable without a default (no table rewrite); the index is
built CONCURRENTLY so requests and answers go on meanwhile, and a run interrupted there
is finished by running it again.

The `ALTER` (and the downgrade's) waits for the table's lock at most `LOCK_TIMEOUT`, then
gives it up and tries again after a pause, up to `LOCK_TRIES` times
(coordinator/store/migrations/patience.py, as 0031): queued behind a long transaction it
would otherwise hold up every reader behind it, and the tracker reads this table in every
ack batch. The CONCURRENTLY drop and build take no lock readers wait for.

The downgrade refuses once a prune has used the columns: the older code would lose the
publication times of pruned verify batches and could not find an HMAC id.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

from coordinator.store.migrations.patience import build_index_concurrently, patiently

revision = "0032_verification_retention"
down_revision = "0031_audit_link"
branch_labels = None
depends_on = None

_TABLE = "retention_verifications"
_INDEX = "ix_retention_verifications_unpseudonymised"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        patiently(
            "0032",
            _TABLE,
            f"ALTER TABLE {_TABLE} ADD COLUMN IF NOT EXISTS published_at timestamp with time zone, "
            "ADD COLUMN IF NOT EXISTS pseudonymised_at timestamp with time zone",
        )
        build_index_concurrently(
            _INDEX, f"ON {_TABLE} (requested_at, event_id) WHERE pseudonymised_at IS NULL"
        )


def downgrade() -> None:
    used = (
        op.get_bind()
        .execute(
            text(
                f"SELECT EXISTS (SELECT 1 FROM {_TABLE} "
                "WHERE published_at IS NOT NULL OR pseudonymised_at IS NOT NULL)"
            )
        )
        .scalar()
    )
    if used:
        raise RuntimeError(
            "0032: retention_verifications holds publication times of pruned verify batches "
            "or HMAC entity ids; the previous version would lose the first and not find the "
            "second. Not downgrading."
        )
    patiently(
        "0032",
        _TABLE,
        f"DROP INDEX IF EXISTS {_INDEX}; "
        f"ALTER TABLE {_TABLE} DROP COLUMN pseudonymised_at, DROP COLUMN published_at",
        step="downgrade",
    )
