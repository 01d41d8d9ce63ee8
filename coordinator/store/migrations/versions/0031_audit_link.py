"""ack batches link their ledger rows and completed events to their audit entries by a
token known before the audit chain's lock

Revision ID: 0031_audit_link
Revises: 0030_ack_row_event_ms
Create Date: 2026-12-07 04:15:00.000000

An ack batch's ledger rows carried the seq of the `acks_accepted` / `acks_rejected`
entry recording them, and its completed events the seq of `events_completed`: a seq is
decided only with the chain's lock held, so those writes ran under the lock, and two
`serve` replicas' batches waited for each other's (docs/tracking.md, "The ack batch's
link to its audit entries"). Now a batch draws a number from
`retention_audit_link_seq` before the lock, writes it as `audit_link` /
`completed_audit_link`, and its entries carry it in `audit_log.link`: an entry is found
by (link, action). Rows written before keep their seq, which readers use first; nothing
is converted. Both columns are NULL where the seq is set, and the other way round.

The audit log and the ledger may still be mid-conversion to partitions (migrations 0021
and 0025, coordinator/evidence/partitions.py): the shadow tables get the columns and the
index too, so the copy carries them.
"""

from __future__ import annotations

from alembic import op

revision = "0031_audit_link"
down_revision = "0030_ack_row_event_ms"
branch_labels = None
depends_on = None

_IF_EXISTS = "DO $$ BEGIN IF to_regclass('{table}') IS NOT NULL THEN {sql}; END IF; END $$"


def upgrade() -> None:
    op.execute("CREATE SEQUENCE retention_audit_link_seq")
    for table in ("audit_log", "audit_log_partitioned"):
        op.execute(
            _IF_EXISTS.format(
                table=table,
                sql=f"ALTER TABLE {table} ADD COLUMN link bigint;"
                f" CREATE INDEX ix_{table}_link ON {table} (link) WHERE link IS NOT NULL",
            )
        )
    for table in ("retention_ack_ledger", "retention_ack_ledger_partitioned"):
        op.execute(
            _IF_EXISTS.format(table=table, sql=f"ALTER TABLE {table} ADD COLUMN audit_link bigint")
        )
    op.execute("ALTER TABLE retention_event_status ADD COLUMN completed_audit_link bigint")


def downgrade() -> None:
    op.execute("ALTER TABLE retention_event_status DROP COLUMN completed_audit_link")
    for table in ("retention_ack_ledger", "retention_ack_ledger_partitioned"):
        op.execute(
            _IF_EXISTS.format(table=table, sql=f"ALTER TABLE {table} DROP COLUMN audit_link")
        )
    for table in ("audit_log", "audit_log_partitioned"):
        op.execute(_IF_EXISTS.format(table=table, sql=f"ALTER TABLE {table} DROP COLUMN link"))
    op.execute("DROP SEQUENCE retention_audit_link_seq")
