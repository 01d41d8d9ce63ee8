"""anonymize marks: where each anonymize policy's anonymized prefix ends

Revision ID: 0008_anonymize_marks
Revises: 0007_overdue_index
Create Date: 2026-12-06 05:00:00.000000

Without it every anonymize run re-walked and row-locked every row the policy had ever
anonymized (coordinator/purge/marks.py). No mark means "start from the first key", the
behaviour before, so existing deployments need no backfill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008_anonymize_marks'
down_revision = '0007_overdue_index'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_anonymize_marks',
    sa.Column('policy', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.Text(), nullable=False),
    sa.Column('last_key', sa.Text(), nullable=False),
    sa.Column('cutoff', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('policy', name=op.f('pk_retention_anonymize_marks'))
    )


def downgrade() -> None:
    op.drop_table('retention_anonymize_marks')
