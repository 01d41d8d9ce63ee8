"""holds reach services: the holds topic's outbox, and `held` acks and event states;
the key id that verified each ack

Revision ID: 0018_hold_topic
Revises: 0017_suppression
Create Date: 2026-12-06 07:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0018_hold_topic'
down_revision = '0017_suppression'
branch_labels = None
depends_on = None

_ACKS, _ACKS_CHECK = 'retention_expected_acks', 'ck_retention_expected_acks_status'
_EVENTS, _EVENTS_CHECK = 'retention_event_status', 'ck_retention_event_status_state'


def upgrade() -> None:
    op.create_table('retention_hold_topic_queue',
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('entity_type', 'entity_id', name=op.f('pk_retention_hold_topic_queue'))
    )
    op.add_column('legal_holds', sa.Column('expiry_queued_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('retention_ack_ledger', sa.Column('key_id', sa.Text(), nullable=True))
    # Every entity held before this revision is queued, so the topic starts complete.
    op.execute(
        "INSERT INTO retention_hold_topic_queue (entity_type, entity_id, queued_at) "
        "SELECT DISTINCT e.entity_type, e.entity_id, now() FROM legal_hold_entities e "
        "JOIN legal_holds h ON h.id = e.hold_id WHERE h.released_at IS NULL "
        "AND (h.expires_at IS NULL OR h.expires_at > now())"
    )
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
        "state IN ('pending', 'completed', 'failed', 'overdue', 'resurrected', 'held')",
    )


def downgrade() -> None:
    op.execute(f"UPDATE {_EVENTS} SET state = 'pending' WHERE state = 'held'")
    op.execute(f"UPDATE {_ACKS} SET status = 'pending' WHERE status = 'held'")
    op.drop_constraint(_EVENTS_CHECK, _EVENTS, type_='check')
    op.create_check_constraint(
        _EVENTS_CHECK, _EVENTS, "state IN ('pending', 'completed', 'failed', 'overdue', 'resurrected')"
    )
    # 0014_verification's list, which already admitted `held`.
    op.drop_constraint(_ACKS_CHECK, _ACKS, type_='check')
    op.create_check_constraint(
        _ACKS_CHECK,
        _ACKS,
        "status IN ('pending', 'completed', 'not_found', 'failed', 'waived', 'held', "
        "'still_present')",
    )
    op.drop_column('retention_ack_ledger', 'key_id')
    op.drop_column('legal_holds', 'expiry_queued_at')
    op.drop_table('retention_hold_topic_queue')
