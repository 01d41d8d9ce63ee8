"""verify sampler (SPEC §12): an index over completed deletions per policy, and a keyset
mark, so each sampling chunk reads the next rows instead of aggregating every deletion;
the report's verify events by request time

Revision ID: 0019_verify_sampler
Revises: 0018_hold_topic
Create Date: 2026-12-06 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019_verify_sampler'
down_revision = '0018_hold_topic'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_retention_event_status_completed_deletions',
        'retention_event_status',
        ['policy', 'completed_at', 'event_id'],
        postgresql_where=sa.text("state = 'completed' AND event_type = 'delete'"),
    )
    op.add_column('retention_verify_marks', sa.Column('event_id', sa.Uuid(), nullable=True))
    op.create_index(
        'ix_retention_verifications_requested_at', 'retention_verifications', ['requested_at']
    )


def downgrade() -> None:
    op.drop_index('ix_retention_verifications_requested_at', table_name='retention_verifications')
    op.drop_column('retention_verify_marks', 'event_id')
    op.drop_index(
        'ix_retention_event_status_completed_deletions', table_name='retention_event_status'
    )
