"""declared services: each expected ack's own deadline (a service's `completion_deadline`)

Revision ID: 0015_service_deadlines
Revises: 0014_republish_indexes
Create Date: 2026-12-06 07:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015_service_deadlines'
down_revision = '0014_republish_indexes'
branch_labels = None
depends_on = None

_TABLE = 'retention_expected_acks'
_INDEX = 'ix_retention_expected_acks_own_deadline'


def upgrade() -> None:
    # Nullable, no default: existing rows keep their event's deadline, and adding the
    # column rewrites nothing.
    op.add_column(_TABLE, sa.Column('deadline', sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        _INDEX,
        _TABLE,
        ['deadline'],
        postgresql_where=sa.text("deadline IS NOT NULL AND status IN ('pending', 'failed')"),
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    op.drop_column(_TABLE, 'deadline')
