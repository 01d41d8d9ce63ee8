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
"""

from __future__ import annotations

from alembic import op

revision = '0032_verification_retention'
down_revision = '0031_audit_link'
branch_labels = None
depends_on = None

_TABLE = 'retention_verifications'
_INDEX = 'ix_retention_verifications_unpseudonymised'


def upgrade() -> None:
    op.execute(
        f'ALTER TABLE {_TABLE} ADD COLUMN IF NOT EXISTS published_at timestamp with time zone, '
        'ADD COLUMN IF NOT EXISTS pseudonymised_at timestamp with time zone'
    )
    with op.get_context().autocommit_block():
        # What an interrupted CONCURRENTLY build leaves: an invalid index, never used.
        op.execute(
            f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = "
            f"to_regclass('{_INDEX}') AND NOT indisvalid) THEN "
            f"DROP INDEX {_INDEX}; END IF; END $$"
        )
        op.execute(
            f'CREATE INDEX CONCURRENTLY IF NOT EXISTS {_INDEX} ON {_TABLE} '
            '(requested_at, event_id) WHERE pseudonymised_at IS NULL'
        )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    op.drop_column(_TABLE, 'pseudonymised_at')
    op.drop_column(_TABLE, 'published_at')
