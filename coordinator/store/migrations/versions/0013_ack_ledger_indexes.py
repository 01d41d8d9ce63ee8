"""ack ledger: index only the rejected acks by event and time

Revision ID: 0013_ack_ledger_indexes
Revises: 0012_outbox_batches
Create Date: 2026-12-06 08:00:00.000000

Every accepted ack paid for five indexes. Accepted acks are found by event through the
partial unique index (event_id leads it); only the rejected ones are looked up by event
(the entity timeline) and by time (the report), so those two indexes now cover just the
rejected rows, which are few. Writing an accepted ack maintains three indexes: the
primary key and the two de-duplicating unique ones.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013_ack_ledger_indexes'
down_revision = '0012_outbox_batches'
branch_labels = None
depends_on = None

_TABLE = 'retention_ack_ledger'


def upgrade() -> None:
    op.drop_index('ix_retention_ack_ledger_event_id', table_name=_TABLE)
    op.drop_index('ix_retention_ack_ledger_received_at', table_name=_TABLE)
    op.create_index('ix_retention_ack_ledger_rejected_event_id', _TABLE, ['event_id'], unique=False, postgresql_where=sa.text('NOT accepted'))
    op.create_index('ix_retention_ack_ledger_rejected_received_at', _TABLE, ['received_at'], unique=False, postgresql_where=sa.text('NOT accepted'))


def downgrade() -> None:
    op.drop_index('ix_retention_ack_ledger_rejected_received_at', table_name=_TABLE, postgresql_where=sa.text('NOT accepted'))
    op.drop_index('ix_retention_ack_ledger_rejected_event_id', table_name=_TABLE, postgresql_where=sa.text('NOT accepted'))
    op.create_index('ix_retention_ack_ledger_event_id', _TABLE, ['event_id'], unique=False)
    op.create_index('ix_retention_ack_ledger_received_at', _TABLE, ['received_at'], unique=False)
