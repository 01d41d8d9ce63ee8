"""composite types for an ack batch's ledger rows and expected-ack changes

Revision ID: 0027_ack_ledger_row_type
Revises: 0026_tracker_scan_indexes
Create Date: 2026-12-06 16:45:00.000000

The tracker sends a batch's ledger rows and its expected-ack changes each as one array
of these types rather than one array per column (coordinator/tracking/ledger.py,
`columns.unnest_rows`): asyncpg then checks an array's shape once per row instead of
once per value, and PostgreSQL unpacks one array, not sixteen or nine. The attributes
are the columns the tracker writes per row, in the order it sends them; the ledger's
`received_at` and `audit_seq` are bound once per statement.
"""

from __future__ import annotations

from alembic import op

revision = '0027_ack_ledger_row_type'
down_revision = '0026_tracker_scan_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE TYPE retention_ack_row AS (
  kafka_topic text,
  kafka_partition integer,
  kafka_offset bigint,
  event_id uuid,
  service text,
  entity_type text,
  entity_id text,
  status text,
  records_affected bigint,
  attempt integer,
  detail text,
  acknowledged_at timestamptz,
  accepted boolean,
  reject_reason text,
  key_id text,
  event_at timestamptz
)
"""
    )
    op.execute(
        """
CREATE TYPE retention_ack_change AS (
  event_id uuid,
  service text,
  status text,
  records_affected bigint,
  attempt integer,
  detail text,
  acknowledged_at timestamptz,
  first_ack_at timestamptz,
  acks_received integer
)
"""
    )


def downgrade() -> None:
    op.execute("DROP TYPE retention_ack_change")
    op.execute("DROP TYPE retention_ack_row")
