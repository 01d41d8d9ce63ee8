"""background re-sends of a whole run: the republish jobs queue

Revision ID: 0023_republish_jobs
Revises: 0022_vault
Create Date: 2026-12-06 10:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0023_republish_jobs'
down_revision = '0022_vault'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_republish_jobs',
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('service', sa.Text(), nullable=True),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('state', sa.Text(), server_default=sa.text("'queued'"), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('sent', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('held', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed')", name='ck_retention_republish_jobs_state'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_retention_republish_jobs'))
    )
    op.create_index('ix_retention_republish_jobs_open', 'retention_republish_jobs', ['created_at'], unique=False, postgresql_where=sa.text("state IN ('queued', 'running')"))
    op.create_index('ix_retention_republish_jobs_finished', 'retention_republish_jobs', ['finished_at'], unique=False, postgresql_where=sa.text('finished_at IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_retention_republish_jobs_finished', table_name='retention_republish_jobs', postgresql_where=sa.text('finished_at IS NOT NULL'))
    op.drop_index('ix_retention_republish_jobs_open', table_name='retention_republish_jobs', postgresql_where=sa.text("state IN ('queued', 'running')"))
    op.drop_table('retention_republish_jobs')
