"""declared services: `waived` acknowledgements (retire, waive) and who waived them

Revision ID: 0011_waivers
Revises: 0010_data_keys
Create Date: 2026-12-06 04:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011_waivers'
down_revision = '0010_data_keys'
branch_labels = None
depends_on = None

_TABLE = 'retention_expected_acks'
_CHECK = 'ck_retention_expected_acks_status'


def upgrade() -> None:
    op.add_column(_TABLE, sa.Column('waived_by', sa.Text(), nullable=True))
    op.drop_constraint(_CHECK, _TABLE, type_='check')
    op.create_check_constraint(
        _CHECK, _TABLE, "status IN ('pending', 'completed', 'not_found', 'failed', 'waived')"
    )


def downgrade() -> None:
    op.drop_constraint(_CHECK, _TABLE, type_='check')
    op.create_check_constraint(
        _CHECK, _TABLE, "status IN ('pending', 'completed', 'not_found', 'failed')"
    )
    op.drop_column(_TABLE, 'waived_by')
