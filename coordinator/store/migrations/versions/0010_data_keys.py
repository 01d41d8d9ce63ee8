"""key store of wrapped data keys; crypto-shredded archive copies on erasure parts

Revision ID: 0010_data_keys
Revises: 0009_notifications
Create Date: 2026-12-06 05:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010_data_keys'
down_revision = '0009_notifications'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_data_keys',
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('key_id', sa.Uuid(), nullable=False),
    sa.Column('kek_id', sa.Text(), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('scope'),
    sa.UniqueConstraint('key_id')
    )
    op.add_column('erasure_request_parts', sa.Column('archived_copies_shredded', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('erasure_request_parts', sa.Column('shredded_key_id', sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column('erasure_request_parts', 'shredded_key_id')
    op.drop_column('erasure_request_parts', 'archived_copies_shredded')
    op.drop_table('retention_data_keys')
