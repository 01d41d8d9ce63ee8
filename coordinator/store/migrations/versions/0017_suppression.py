"""suppression list (SPEC §12): erased entities by HMAC, published to the erased topic

Revision ID: 0017_suppression
Revises: 0016_verification
Create Date: 2026-12-06 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017_suppression'
down_revision = '0016_verification'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retention_erased_entities',
        sa.Column('key', sa.Text(), nullable=False),
        sa.Column('erased_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('key', name='pk_retention_erased_entities'),
    )
    op.create_index(
        'ix_retention_erased_entities_unpublished',
        'retention_erased_entities',
        ['erased_at'],
        postgresql_where=sa.text('published_at IS NULL'),
    )
    op.create_index(
        'ix_retention_erased_entities_expires_at', 'retention_erased_entities', ['expires_at']
    )


def downgrade() -> None:
    op.drop_index(
        'ix_retention_erased_entities_expires_at', table_name='retention_erased_entities'
    )
    op.drop_index(
        'ix_retention_erased_entities_unpublished', table_name='retention_erased_entities'
    )
    op.drop_table('retention_erased_entities')
