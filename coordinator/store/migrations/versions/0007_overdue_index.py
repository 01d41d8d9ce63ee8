"""a partial index on overdue events, for the tracker's overdue gauge

Revision ID: 0007_overdue_index
Revises: 0006_erasure
Create Date: 2026-12-06 04:40:00.000000

The gauge counted every open expected ack and joined each to its event to find the
overdue ones; with this index it starts from the overdue events, which are few.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_overdue_index'
down_revision = '0006_erasure'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_retention_event_status_overdue',
        'retention_event_status',
        ['event_id'],
        unique=False,
        postgresql_where=sa.text("state = 'overdue'"),
    )


def downgrade() -> None:
    op.drop_index('ix_retention_event_status_overdue', table_name='retention_event_status')
