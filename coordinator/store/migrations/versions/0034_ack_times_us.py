"""the ack batch's ledger rows and expected-ack changes carry their ack times as Unix microseconds

Revision ID: 0034_ack_times_us
Revises: 0033_verify_findings_index
Create Date: 2026-12-07 19:15:00.000000

`retention_ack_row_us` is `retention_ack_row_ms` (migration 0030) with `acknowledged_at`
sent as `acknowledged_us`, and `retention_ack_change_us` is `retention_ack_change`
(migration 0027) with `acknowledged_at` and `first_ack_at` sent as `acknowledged_us` and
`first_ack_us`: the Unix microseconds they stand for. asyncpg encodes an aware datetime
through comparisons with its infinities that ask the datetime's `tzinfo` for its offset,
a bigint without any (docs/tracking.md, "Session 16"). The statements turn them back
into the timestamptz columns (coordinator/tracking/ledger.py).

The older types stay: trackers of the previous version send them until they are
replaced, so upgrading the database first stops no tracker.
"""

from __future__ import annotations

from alembic import op

revision = "0034_ack_times_us"
down_revision = "0033_verify_findings_index"
branch_labels = None
depends_on = None


def _create(definition: str) -> None:
    # A database stamped back before this revision (to re-run an interrupted 0031) has
    # the types already: the upgrade gets past them.
    op.execute(f"DO $$ BEGIN {definition}; EXCEPTION WHEN duplicate_object THEN NULL; END $$")


def upgrade() -> None:
    _create(
        """
CREATE TYPE retention_ack_row_us AS (
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
  acknowledged_us bigint,
  accepted boolean,
  reject_reason text,
  key_id text,
  event_ms bigint
)"""
    )
    _create(
        """
CREATE TYPE retention_ack_change_us AS (
  event_id uuid,
  service text,
  status text,
  records_affected bigint,
  attempt integer,
  detail text,
  acknowledged_us bigint,
  first_ack_us bigint,
  acks_received integer
)"""
    )


def downgrade() -> None:
    op.execute("DROP TYPE retention_ack_change_us")
    op.execute("DROP TYPE retention_ack_row_us")
