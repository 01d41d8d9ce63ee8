"""restoration window: the vault of sealed deleted rows

Revision ID: 0022_vault
Revises: 0021_audit_partitions
Create Date: 2026-12-06 07:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022_vault'
down_revision = '0021_audit_partitions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_vault',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('policy', sa.Text(), nullable=False),
    sa.Column('table_name', sa.Text(), nullable=False),
    sa.Column('id_column', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('key_id', sa.Uuid(), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('restored_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('restored_by', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_vault'))
    )
    op.create_index(op.f('ix_retention_vault_run_id_id'), 'retention_vault', ['run_id', 'id'], unique=False)
    op.create_index(op.f('ix_retention_vault_scope'), 'retention_vault', ['scope'], unique=False)
    op.create_index(op.f('ix_retention_vault_expires_at'), 'retention_vault', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_retention_vault_expires_at'), table_name='retention_vault')
    op.drop_index(op.f('ix_retention_vault_scope'), table_name='retention_vault')
    op.drop_index(op.f('ix_retention_vault_run_id_id'), table_name='retention_vault')
    op.drop_table('retention_vault')
