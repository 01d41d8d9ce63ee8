"""erasure requests: requests, their parts, outbox reason/request/subject, results' legal basis

Revision ID: 0006_erasure
Revises: 0005_event_ids
Create Date: 2026-12-06 04:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006_erasure'
down_revision = '0005_event_ids'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('retention_policy_results', sa.Column('legal_basis', sa.Text(), nullable=True))
    op.add_column('retention_outbox', sa.Column('reason', sa.Text(), server_default=sa.text("'retention_policy'"), nullable=False))
    op.add_column('retention_outbox', sa.Column('request_id', sa.Uuid(), nullable=True))
    op.add_column('retention_outbox', sa.Column('subject', sa.Text(), nullable=True))
    op.create_index('ix_retention_outbox_request_id', 'retention_outbox', ['request_id'], unique=False, postgresql_where=sa.text('request_id IS NOT NULL'))
    op.create_table('erasure_requests',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('subject_type', sa.Text(), nullable=False),
    sa.Column('subject_id', sa.Text(), nullable=False),
    sa.Column('regulation', sa.Text(), nullable=False),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), server_default=sa.text("'received'"), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=True),
    sa.Column('extended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('extension_reason', sa.Text(), nullable=True),
    sa.Column('local_done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rejected_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rejected_by', sa.Text(), nullable=True),
    sa.Column('rejection_reason', sa.Text(), nullable=True),
    sa.Column('holds', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.CheckConstraint("status IN ('received', 'in_progress', 'on_hold', 'completed', 'rejected')", name=op.f('ck_erasure_requests_status')),
    sa.CheckConstraint("regulation IN ('gdpr', 'ccpa', 'other')", name=op.f('ck_erasure_requests_regulation')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erasure_requests')),
    sa.UniqueConstraint('reference', name='uq_erasure_requests_reference')
    )
    op.create_index(op.f('ix_erasure_requests_subject_type_subject_id'), 'erasure_requests', ['subject_type', 'subject_id'], unique=False)
    op.create_index('ix_erasure_requests_open', 'erasure_requests', ['due_at'], unique=False, postgresql_where=sa.text("status NOT IN ('completed', 'rejected')"))
    op.create_table('erasure_request_parts',
    sa.Column('request_id', sa.Uuid(), nullable=False),
    sa.Column('policy', sa.Text(), nullable=False),
    sa.Column('table_name', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.Column('rows', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('held', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('events', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('archived_copies_deleted', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('legal_basis', sa.Text(), nullable=False),
    sa.Column('exemption_basis', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), server_default=sa.text("''"), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("outcome IN ('pending', 'done', 'exempt', 'superseded', 'error')", name=op.f('ck_erasure_request_parts_outcome')),
    sa.ForeignKeyConstraint(['request_id'], ['erasure_requests.id'], name=op.f('fk_erasure_request_parts_request_id_erasure_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id', 'policy', name=op.f('pk_erasure_request_parts'))
    )


def downgrade() -> None:
    op.drop_table('erasure_request_parts')
    op.drop_index('ix_erasure_requests_open', table_name='erasure_requests', postgresql_where=sa.text("status NOT IN ('completed', 'rejected')"))
    op.drop_index(op.f('ix_erasure_requests_subject_type_subject_id'), table_name='erasure_requests')
    op.drop_table('erasure_requests')
    op.drop_index('ix_retention_outbox_request_id', table_name='retention_outbox', postgresql_where=sa.text('request_id IS NOT NULL'))
    op.drop_column('retention_outbox', 'subject')
    op.drop_column('retention_outbox', 'request_id')
    op.drop_column('retention_outbox', 'reason')
    op.drop_column('retention_policy_results', 'legal_basis')
