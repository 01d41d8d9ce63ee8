"""partial indexes for the tracker's released-holds scan and overdue escalation

Revision ID: 0026_tracker_scan_indexes
Revises: 0025_ack_ledger_partitions
Create Date: 2026-12-06 14:50:00.000000

Both passes run every housekeeping cycle. Without these indexes each read every
expected ack (the `held` ones) or every open event (those past their deadline): a cost
per cycle that grew with the tables, not with the work found.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0026_tracker_scan_indexes'
down_revision = '0025_ack_ledger_partitions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_retention_expected_acks_held',
        'retention_expected_acks',
        ['event_id'],
        unique=False,
        postgresql_where=sa.text("status = 'held'"),
    )
    op.create_index(
        'ix_retention_event_status_open_deadline',
        'retention_event_status',
        ['deadline'],
        unique=False,
        postgresql_where=sa.text("state IN ('pending', 'failed')"),
    )


def downgrade() -> None:
    op.drop_index('ix_retention_event_status_open_deadline', table_name='retention_event_status')
    op.drop_index('ix_retention_expected_acks_held', table_name='retention_expected_acks')
