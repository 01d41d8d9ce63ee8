"""verification (SPEC §12): verify events and answers, sampling marks, `still_present` acks
and `resurrected` events

Revision ID: 0016_verification
Revises: 0015_service_deadlines
Create Date: 2026-12-06 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016_verification'
down_revision = '0015_service_deadlines'
branch_labels = None
depends_on = None

_ACKS, _ACKS_CHECK = 'retention_expected_acks', 'ck_retention_expected_acks_status'
_EVENTS, _EVENTS_CHECK = 'retention_event_status', 'ck_retention_event_status_state'


def upgrade() -> None:
    op.create_table(
        'retention_verifications',
        sa.Column('event_id', sa.Uuid(), nullable=False),
        sa.Column('entity_type', sa.Text(), nullable=False),
        sa.Column('entity_id', sa.Text(), nullable=False),
        sa.Column('policy', sa.Text(), nullable=False),
        sa.Column('trigger', sa.Text(), nullable=False),
        sa.Column('requested_by', sa.Text(), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "trigger IN ('sample', 'on_demand')", name='ck_retention_verifications_trigger'
        ),
        sa.PrimaryKeyConstraint('event_id', name='pk_retention_verifications'),
    )
    op.create_index(
        'ix_retention_verifications_entity_type_entity_id',
        'retention_verifications',
        ['entity_type', 'entity_id'],
    )
    op.create_table(
        'retention_verify_answers',
        sa.Column('event_id', sa.Uuid(), nullable=False),
        sa.Column('service', sa.Text(), nullable=False),
        sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column('records_affected', sa.BigInteger(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'verified', 'still_present', 'unsupported', 'failed')",
            name='ck_retention_verify_answers_status',
        ),
        sa.ForeignKeyConstraint(
            ['event_id'],
            ['retention_verifications.event_id'],
            name='fk_retention_verify_answers_event_id_retention_verifications',
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('event_id', 'service', name='pk_retention_verify_answers'),
    )
    op.create_table(
        'retention_verify_marks',
        sa.Column('policy', sa.Text(), nullable=False),
        sa.Column('completed_before', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('policy', name='pk_retention_verify_marks'),
    )
    # `held` is listed too (SPEC §15), so this constraint is right whichever of the two
    # migrations that widen it runs last.
    op.drop_constraint(_ACKS_CHECK, _ACKS, type_='check')
    op.create_check_constraint(
        _ACKS_CHECK,
        _ACKS,
        "status IN ('pending', 'completed', 'not_found', 'failed', 'waived', 'held', "
        "'still_present')",
    )
    op.drop_constraint(_EVENTS_CHECK, _EVENTS, type_='check')
    op.create_check_constraint(
        _EVENTS_CHECK,
        _EVENTS,
        "state IN ('pending', 'completed', 'failed', 'overdue', 'resurrected')",
    )
    op.create_index(
        'ix_retention_expected_acks_still_present',
        _ACKS,
        ['service'],
        postgresql_where=sa.text("status = 'still_present'"),
    )


def downgrade() -> None:
    op.drop_index('ix_retention_expected_acks_still_present', table_name=_ACKS)
    op.drop_constraint(_EVENTS_CHECK, _EVENTS, type_='check')
    op.create_check_constraint(
        _EVENTS_CHECK, _EVENTS, "state IN ('pending', 'completed', 'failed', 'overdue')"
    )
    op.drop_constraint(_ACKS_CHECK, _ACKS, type_='check')
    op.create_check_constraint(
        _ACKS_CHECK, _ACKS, "status IN ('pending', 'completed', 'not_found', 'failed', 'waived')"
    )
    op.drop_table('retention_verify_marks')
    op.drop_table('retention_verify_answers')
    op.drop_index(
        'ix_retention_verifications_entity_type_entity_id', table_name='retention_verifications'
    )
    op.drop_table('retention_verifications')
