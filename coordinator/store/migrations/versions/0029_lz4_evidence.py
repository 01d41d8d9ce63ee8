"""lz4 for the large values the tracking and ack path write: audit data, outbox id arrays

Revision ID: 0029_lz4_evidence
Revises: 0028_expected_acks_no_fk
Create Date: 2026-12-06 22:50:00.000000

An ack batch's audit entry names every ack (about 130 bytes of JSON each, ~260 KB for
2,000 acks), a tracking pass's names 1,000 events, the relay's and the purge's a batch's
ids; an outbox batch holds up to 5,000 ids. PostgreSQL compresses such values as it
stores them (TOAST), with pglz by default; lz4 compresses them about as small in less
than half the time, and decompresses faster too (docs/tracking.md, "lz4").

PostgreSQL applies a column's compression to new values only: rows already stored stay
as they are, and both kinds read back alike. A partitioned table's setting is inherited
by partitions created later, not by existing ones, so each existing partition (and a
conversion's shadow table with its partitions) is set too. A server built without lz4
refuses the method: the migration then leaves everything as it was (pglz).
"""

from __future__ import annotations

from alembic import op

revision = '0029_lz4_evidence'
down_revision = '0028_expected_acks_no_fk'
branch_labels = None
depends_on = None

# (column, tables whose partitions and shadows take it too)
_COLUMNS = (
    ('data', ('audit_log', 'audit_log_partitioned')),
    ('entity_ids', ('retention_outbox_batches', 'retention_outbox_batches_partitioned')),
    ('subjects', ('retention_outbox_batches', 'retention_outbox_batches_partitioned')),
)


def _set(method: str) -> str:
    statements = []
    for column, roots in _COLUMNS:
        names = ', '.join(f"'{name}'" for name in roots)
        statements.append(
            'FOR r IN WITH RECURSIVE rels(oid) AS ('
            f' SELECT to_regclass(name)::oid FROM unnest(ARRAY[{names}]) AS name'
            ' WHERE to_regclass(name) IS NOT NULL'
            ' UNION SELECT i.inhrelid FROM pg_inherits i JOIN rels ON i.inhparent = rels.oid)'
            ' SELECT oid::regclass AS rel FROM rels LOOP'
            f" EXECUTE format('ALTER TABLE %s ALTER COLUMN {column} SET COMPRESSION {method}',"
            ' r.rel);'
            ' END LOOP;'
        )
    return (
        'DO $$ DECLARE r record; BEGIN '
        + ' '.join(statements)
        + ' EXCEPTION WHEN feature_not_supported THEN NULL; END $$'
    )


def upgrade() -> None:
    op.execute(_set('lz4'))


def downgrade() -> None:
    op.execute(_set('default'))
