"""notifications: the webhook delivery outbox

Revision ID: 0009_notifications
Revises: 0008_anonymize_marks
Create Date: 2026-12-06 05:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0009_notifications'
down_revision = '0008_anonymize_marks'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_notifications',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('webhook', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'delivered', 'dropped')", name='ck_retention_notifications_status'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_notifications')),
    sa.UniqueConstraint('webhook', 'key', name=op.f('uq_retention_notifications_webhook_key'))
    )
    op.create_index('ix_retention_notifications_due', 'retention_notifications', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index('ix_retention_notifications_due', table_name='retention_notifications', postgresql_where=sa.text("status = 'pending'"))
    op.drop_table('retention_notifications')
