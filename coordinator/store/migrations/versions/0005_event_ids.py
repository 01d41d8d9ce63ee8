"""time-ordered outbox event ids: retention_uuidv7() and retention_uuidv7_nth()

Revision ID: 0005_event_ids
Revises: 0004_scheduler
Create Date: 2026-11-29 14:20:00.000000

PostgreSQL 15 has no uuidv7(). Random (v4) event ids scatter every outbox insert over
the whole primary-key index; time-ordered ids append to its right edge, which is what
made the purge's outbox insert cheaper (docs/benchmarks.md, "Profile").
"""

from __future__ import annotations

from alembic import op

revision = '0005_event_ids'
down_revision = '0004_scheduler'
branch_labels = None
depends_on = None

# RFC 9562 UUIDv7: 48-bit Unix time in milliseconds, version 7, variant 0b10, 74 random
# bits. The random bits and the variant come from gen_random_uuid(); setting bits 52 and
# 53 turns its version nibble 4 (0100) into 7 (0111).
UUIDV7 = """
CREATE FUNCTION retention_uuidv7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$
"""

# The n-th id of a batch: `base` (one retention_uuidv7() per batch) with its last 32
# bits replaced by n, a counter in rand_b (RFC 9562 section 6.2). Ids of one batch are
# distinct and ascending by n; batches differ in their timestamp and 42 random bits.
# One gen_random_uuid() per batch instead of per row, and IMMUTABLE SQL so PostgreSQL
# inlines it into the INSERT ... SELECT.
UUIDV7_NTH = """
CREATE FUNCTION retention_uuidv7_nth(base uuid, n bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT encode(overlay(uuid_send(base) PLACING int4send(n::integer) FROM 13 FOR 4), 'hex')::uuid
$$
"""


def upgrade() -> None:
    op.execute(UUIDV7)
    op.execute(UUIDV7_NTH)


def downgrade() -> None:
    op.execute('DROP FUNCTION retention_uuidv7_nth(uuid, bigint)')
    op.execute('DROP FUNCTION retention_uuidv7()')
