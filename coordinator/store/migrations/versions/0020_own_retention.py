"""own retention: audit checkpoints, pseudonymised evidence (SPEC §13)

Revision ID: 0020_own_retention
Revises: 0019_verify_sampler
Create Date: 2026-12-06 07:40:00.000000

Audit checkpoints are signed chain heads and the traces of pruned segments; without rows
there `retention audit verify` walks the whole chain, as before. `pseudonymised_at` marks
event status rows whose entity id (and their ledger rows') became an HMAC; null for every
existing row, which the next prune handles.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0020_own_retention'
down_revision = '0019_verify_sampler'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_checkpoints',
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('first_seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('record', sa.LargeBinary(), nullable=False),
    sa.Column('signature', sa.LargeBinary(), nullable=True),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind IN ('head', 'pruned')", name='ck_audit_checkpoints_kind'),
    sa.CheckConstraint('first_seq <= last_seq', name='ck_audit_checkpoints_range'),
    sa.PrimaryKeyConstraint('kind', 'last_seq', name=op.f('pk_audit_checkpoints'))
    )
    op.add_column(
        'retention_event_status',
        sa.Column('pseudonymised_at', sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column('retention_event_status', 'pseudonymised_at')
    op.drop_table('audit_checkpoints')
