"""the ack batch's ledger rows carry their partition key as Unix milliseconds

Revision ID: 0030_ack_row_event_ms
Revises: 0029_lz4_evidence
Create Date: 2026-12-07 01:40:00.000000

`retention_ack_row_ms` is `retention_ack_row` (migration 0027) with `event_at` sent as
`event_ms`, the Unix milliseconds it stands for: the ledger's partition key is a minting
millisecond by construction (coordinator/evidence/partitions.py, `ledger_event_at`), and
asyncpg encodes a bigint in about half the time of a timestamptz, once per ack. The
insert turns it back into the timestamptz column (coordinator/tracking/ledger.py).

`retention_ack_row` stays: trackers of the previous version send it until they are
replaced, so upgrading the database first stops no tracker.
"""

from __future__ import annotations

from alembic import op

revision = '0030_ack_row_event_ms'
down_revision = '0029_lz4_evidence'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE TYPE retention_ack_row_ms AS (
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
  event_ms bigint
)
"""
    )


def downgrade() -> None:
    op.execute("DROP TYPE retention_ack_row_ms")
