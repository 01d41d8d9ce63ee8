"""indexes for re-publishing a run and for the signature-failure notification

Revision ID: 0012_republish_indexes
Revises: 0011_waivers
Create Date: 2026-12-06 08:00:00.000000

`retention republish --run` pages through one run's outbox rows by event id; without an
index on the run it walks the whole outbox's primary key. The `signature_failures` sweep
counts the last hour's rejected acks; the partial index reads only rejections, not every
ack received in the hour.
"""

from __future__ import annotations

import sqlalchemy as sa
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
    op.create_index(
        'ix_retention_ack_ledger_rejected',
        'retention_ack_ledger',
        ['received_at'],
        unique=False,
        postgresql_where=sa.text('NOT accepted'),
    )


def downgrade() -> None:
    op.drop_index('ix_retention_ack_ledger_rejected', table_name='retention_ack_ledger')
    op.drop_index('ix_retention_outbox_run_id_event_id', table_name='retention_outbox')
