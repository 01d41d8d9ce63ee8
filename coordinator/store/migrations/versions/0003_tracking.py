"""completion tracking: service registry, event status, expected acks, ack ledger

Revision ID: 0003_tracking
Revises: 0002_audit
Create Date: 2026-11-29 11:08:05.960661
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_tracking'
down_revision = '0002_audit'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_ack_ledger',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kafka_topic', sa.Text(), nullable=False),
    sa.Column('kafka_partition', sa.Integer(), nullable=False),
    sa.Column('kafka_offset', sa.BigInteger(), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=True),
    sa.Column('service', sa.Text(), nullable=True),
    sa.Column('entity_type', sa.Text(), nullable=True),
    sa.Column('entity_id', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), nullable=True),
    sa.Column('records_affected', sa.BigInteger(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('reject_reason', sa.Text(), nullable=True),
    sa.Column('audit_seq', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_ack_ledger')),
    sa.UniqueConstraint('kafka_topic', 'kafka_partition', 'kafka_offset', name='uq_retention_ack_ledger_record')
    )
    op.create_index(op.f('ix_retention_ack_ledger_event_id'), 'retention_ack_ledger', ['event_id'], unique=False)
    op.create_index(op.f('ix_retention_ack_ledger_received_at'), 'retention_ack_ledger', ['received_at'], unique=False)
    op.create_index('uq_retention_ack_ledger_ack', 'retention_ack_ledger', ['event_id', 'service', 'attempt', 'status'], unique=True, postgresql_where=sa.text('accepted'))
    op.create_table('retention_event_status',
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('policy', sa.Text(), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=False),
    sa.Column('initiated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('expected', sa.Integer(), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('overdue_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reminders_sent', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_reminder_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tracked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tracked_audit_seq', sa.BigInteger(), nullable=True),
    sa.Column('completed_audit_seq', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'completed', 'failed', 'overdue')", name='ck_retention_event_status_state'),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_retention_event_status'))
    )
    op.create_index(op.f('ix_retention_event_status_entity_type_entity_id'), 'retention_event_status', ['entity_type', 'entity_id'], unique=False)
    op.create_index('ix_retention_event_status_open', 'retention_event_status', ['next_reminder_at'], unique=False, postgresql_where=sa.text("state <> 'completed'"))
    op.create_index(op.f('ix_retention_event_status_published_at'), 'retention_event_status', ['published_at'], unique=False)
    op.create_table('retention_services',
    sa.Column('service', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('sdk_version', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('service', 'entity_type', 'action', name=op.f('pk_retention_services'))
    )
    op.create_index(op.f('ix_retention_services_entity_type_action'), 'retention_services', ['entity_type', 'action'], unique=False)
    op.create_table('retention_expected_acks',
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('service', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('records_affected', sa.BigInteger(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('first_ack_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acks_received', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('joined_late', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'completed', 'not_found', 'failed')", name='ck_retention_expected_acks_status'),
    sa.ForeignKeyConstraint(['event_id'], ['retention_event_status.event_id'], name=op.f('fk_retention_expected_acks_event_id_retention_event_status'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('event_id', 'service', name=op.f('pk_retention_expected_acks'))
    )
    op.create_index('ix_retention_expected_acks_open', 'retention_expected_acks', ['service'], unique=False, postgresql_where=sa.text("status IN ('pending', 'failed')"))


def downgrade() -> None:
    op.drop_index('ix_retention_expected_acks_open', table_name='retention_expected_acks', postgresql_where=sa.text("status IN ('pending', 'failed')"))
    op.drop_table('retention_expected_acks')
    op.drop_index(op.f('ix_retention_services_entity_type_action'), table_name='retention_services')
    op.drop_table('retention_services')
    op.drop_index(op.f('ix_retention_event_status_published_at'), table_name='retention_event_status')
    op.drop_index('ix_retention_event_status_open', table_name='retention_event_status', postgresql_where=sa.text("state <> 'completed'"))
    op.drop_index(op.f('ix_retention_event_status_entity_type_entity_id'), table_name='retention_event_status')
    op.drop_table('retention_event_status')
    op.drop_index('uq_retention_ack_ledger_ack', table_name='retention_ack_ledger', postgresql_where=sa.text('accepted'))
    op.drop_index(op.f('ix_retention_ack_ledger_received_at'), table_name='retention_ack_ledger')
    op.drop_index(op.f('ix_retention_ack_ledger_event_id'), table_name='retention_ack_ledger')
    op.drop_table('retention_ack_ledger')
