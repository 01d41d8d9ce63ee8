"""drop the foreign key retention_expected_acks -> retention_event_status

Revision ID: 0028_expected_acks_no_fk
Revises: 0027_ack_ledger_row_type
Create Date: 2026-12-06 19:40:00.000000

Every expected ack is written together with, or after locking, its event's status row:
the tracking pass inserts both in one statement under the audit chain's lock (an
expected ack only for a status row that statement inserted), and `retention backfill`
adds a service only to status rows it holds FOR UPDATE. The pruning of event status
deletes an event's expected acks in the statement that deletes the event. The key's
check cost the tracking pass about a quarter of its PostgreSQL CPU (docs/tracking.md
"No foreign key"); the fault suite's `settled` invariant checks that no expected ack
is left without its event.

Dropping a constraint reads no rows: the lock on both tables lasts a moment.
"""

from __future__ import annotations

from alembic import op

revision = '0028_expected_acks_no_fk'
down_revision = '0027_ack_ledger_row_type'
branch_labels = None
depends_on = None

_FK = 'fk_retention_expected_acks_event_id_retention_event_status'


def upgrade() -> None:
    op.drop_constraint(_FK, 'retention_expected_acks', type_='foreignkey')


def downgrade() -> None:
    op.create_foreign_key(
        _FK,
        'retention_expected_acks',
        'retention_event_status',
        ['event_id'],
        ['event_id'],
        ondelete='CASCADE',
    )
