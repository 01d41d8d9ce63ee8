"""batch outbox: one row per purge batch, a commit-ordered seq, the relay's watermark

Revision ID: 0012_outbox_batches
Revises: 0011_waivers
Create Date: 2026-12-06 07:50:00.000000

Every row of the per-event outbox becomes a batch of one entity that keeps its event id
(id_base + id_first address it exactly), so events not yet published are published by
the new relay and every reader still finds the old ones. Published rows come first, in
publication order, and one mark per publication time records them as published; the
tracker's cursor starts after the last batch it already follows. docs/upgrading.md
explains the upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0012_outbox_batches'
down_revision = '0011_waivers'
branch_labels = None
depends_on = None

# The low 32 bits of an event id, as retention_uuidv7_nth(base, n) wrote n (int4, signed).
_LOW = "('x' || right({id}::text, 8))::bit(32)::int"

_CONVERT = f"""
CREATE TEMPORARY TABLE retention_outbox_converted ON COMMIT DROP AS
SELECT row_number() OVER (
         ORDER BY o.published_at IS NULL, o.published_at, o.created_at, o.event_id
       ) AS seq,
       o.*,
       EXISTS (SELECT 1 FROM retention_event_status s WHERE s.event_id = o.event_id) AS tracked
FROM retention_outbox o;

INSERT INTO retention_outbox_batches (
  seq, id_base, id_first, events, run_id, policy, event_type, entity_type, legal_basis,
  fields, initiated_at, deadline, reason, request_id, entity_ids, subjects, created_at)
SELECT seq, retention_uuidv7_nth(event_id, 0), {_LOW.format(id='event_id')}, 1, run_id,
       policy, event_type, entity_type, legal_basis, fields, initiated_at, deadline, reason,
       request_id, ARRAY[entity_id],
       CASE WHEN subject IS NULL THEN NULL ELSE ARRAY[subject] END, created_at
FROM retention_outbox_converted;

INSERT INTO retention_outbox_marks (up_to, published_at, events)
SELECT max(seq), published_at, count(*)
FROM retention_outbox_converted WHERE published_at IS NOT NULL
GROUP BY published_at;

INSERT INTO retention_outbox_cursors (name, seq)
SELECT 'tracked', coalesce(
  (SELECT min(seq) - 1 FROM retention_outbox_converted
   WHERE published_at IS NOT NULL AND NOT tracked),
  (SELECT max(seq) FROM retention_outbox_converted WHERE published_at IS NOT NULL),
  0);
"""

_RESTORE = """
INSERT INTO retention_outbox (
  event_id, run_id, policy, event_type, entity_type, entity_id, legal_basis, fields,
  initiated_at, deadline, created_at, published_at, reason, request_id, subject)
SELECT retention_uuidv7_nth(b.id_base, b.id_first + u.n - 1), b.run_id, b.policy,
       b.event_type, b.entity_type, u.entity_id, b.legal_basis, b.fields, b.initiated_at,
       b.deadline, b.created_at,
       (SELECT m.published_at FROM retention_outbox_marks m WHERE m.up_to >= b.seq
        ORDER BY m.up_to LIMIT 1),
       b.reason, b.request_id, u.subject
FROM retention_outbox_batches b,
     unnest(b.entity_ids, b.subjects) WITH ORDINALITY AS u(entity_id, subject, n)
"""


def upgrade() -> None:
    op.create_table('retention_outbox_batches',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('id_base', sa.Uuid(), nullable=False),
    sa.Column('id_first', sa.BigInteger(), nullable=False),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=True),
    sa.Column('policy', sa.Text(), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('legal_basis', sa.Text(), nullable=False),
    sa.Column('fields', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('initiated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), server_default=sa.text("'retention_policy'"), nullable=False),
    sa.Column('request_id', sa.Uuid(), nullable=True),
    sa.Column('entity_ids', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('subjects', postgresql.ARRAY(sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_retention_outbox_batches'))
    )
    op.create_index('ix_retention_outbox_batches_ids', 'retention_outbox_batches', ['id_base', 'id_first'], unique=True)
    op.create_index('ix_retention_outbox_batches_request_id', 'retention_outbox_batches', ['request_id'], unique=False, postgresql_where=sa.text('request_id IS NOT NULL'))
    op.create_table('retention_outbox_marks',
    sa.Column('up_to', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('up_to', name=op.f('pk_retention_outbox_marks'))
    )
    op.create_table('retention_outbox_cursors',
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_retention_outbox_cursors'))
    )
    # No relay may publish from the old table while its rows move.
    op.execute('LOCK TABLE retention_outbox IN EXCLUSIVE MODE')
    for statement in _CONVERT.split(';\n'):
        if statement.strip():
            op.execute(statement)
    op.drop_table('retention_outbox')


def downgrade() -> None:
    op.create_table('retention_outbox',
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=True),
    sa.Column('policy', sa.Text(), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=False),
    sa.Column('legal_basis', sa.Text(), nullable=False),
    sa.Column('fields', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('initiated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('publish_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('reason', sa.Text(), server_default=sa.text("'retention_policy'"), nullable=False),
    sa.Column('request_id', sa.Uuid(), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_retention_outbox'))
    )
    op.create_index(op.f('ix_retention_outbox_entity_type_entity_id'), 'retention_outbox', ['entity_type', 'entity_id'], unique=False)
    op.create_index('ix_retention_outbox_unpublished', 'retention_outbox', ['created_at'], unique=False, postgresql_where=sa.text('published_at IS NULL'))
    op.create_index('ix_retention_outbox_request_id', 'retention_outbox', ['request_id'], unique=False, postgresql_where=sa.text('request_id IS NOT NULL'))
    op.execute(_RESTORE)
    op.drop_table('retention_outbox_cursors')
    op.drop_table('retention_outbox_marks')
    op.drop_table('retention_outbox_batches')
