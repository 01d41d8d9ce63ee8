"""an index on the outbox's run, for re-publishing a run

Revision ID: 0012_republish_indexes
Revises: 0011_waivers
Create Date: 2026-12-06 08:00:00.000000

`retention republish --run` pages through one run's outbox rows by event id; without an
index on the run it walks the whole outbox's primary key.
"""

from __future__ import annotations

from alembic import op

revision = '0012_republish_indexes'
down_revision = '0011_waivers'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_retention_outbox_run_id_event_id',
        'retention_outbox',
        ['run_id', 'event_id'],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index('ix_retention_outbox_run_id_event_id', table_name='retention_outbox')
