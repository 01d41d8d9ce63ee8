"""audit log partitioned by month (SPEC §13, coordinator/evidence/partitions.py)

Revision ID: 0021_audit_partitions
Revises: 0020_own_retention
Create Date: 2026-12-06 08:00:00.000000

Creates `audit_log_partitioned` (RANGE on `at`, primary key (seq, at), a default partition
and the current and next two months). An empty `audit_log` (a new deployment) is swapped
for it at once. A filled one stays in place: `retention db partition` copies it
batch by batch while `serve` runs and swaps at the end, so this migration never holds a
lock for longer than creating empty tables.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from alembic import op

revision = '0021_audit_partitions'
down_revision = '0020_own_retention'
branch_labels = None
depends_on = None


def _months_ahead(count: int = 3) -> list[date]:
    now = datetime.now(UTC)
    first = date(now.year, now.month, 1)
    found = [first]
    while len(found) < count:
        y, m = found[-1].year, found[-1].month
        found.append(date(y + m // 12, m % 12 + 1, 1))
    return found


def upgrade() -> None:
    op.execute(
        "CREATE TABLE audit_log_partitioned ("
        " seq BIGINT NOT NULL,"
        " at TIMESTAMP WITH TIME ZONE NOT NULL,"
        " action TEXT NOT NULL,"
        " actor TEXT NOT NULL,"
        " data JSONB NOT NULL,"
        " prev_hash TEXT NOT NULL,"
        " hash TEXT NOT NULL,"
        " CONSTRAINT pk_audit_log_partitioned PRIMARY KEY (seq, at)"
        ") PARTITION BY RANGE (at)"
    )
    op.execute("CREATE INDEX ix_audit_log_partitioned_action ON audit_log_partitioned (action)")
    op.execute("CREATE TABLE audit_log_default PARTITION OF audit_log_partitioned DEFAULT")
    for first in _months_ahead():
        y, m = first.year, first.month
        end = date(y + m // 12, m % 12 + 1, 1)
        op.execute(
            f"CREATE TABLE audit_log_y{y:04d}m{m:02d} PARTITION OF audit_log_partitioned "
            f"FOR VALUES FROM ('{first.isoformat()}T00:00:00+00:00') "
            f"TO ('{end.isoformat()}T00:00:00+00:00')"
        )
    # Empty (a new deployment): swap now. Otherwise `retention db partition` does.
    op.execute(
        "DO $$ BEGIN "
        "IF NOT EXISTS (SELECT 1 FROM audit_log) THEN "
        " DROP TABLE audit_log;"
        " ALTER TABLE audit_log_partitioned RENAME TO audit_log;"
        " ALTER TABLE audit_log RENAME CONSTRAINT pk_audit_log_partitioned TO pk_audit_log;"
        " ALTER INDEX ix_audit_log_partitioned_action RENAME TO ix_audit_log_action;"
        "END IF; END $$"
    )


def downgrade() -> None:
    # Back to one plain table, rows kept (the partitioned one, or the shadow left beside it).
    op.execute(
        "DO $$ BEGIN "
        "IF EXISTS (SELECT 1 FROM pg_class WHERE relname = 'audit_log_partitioned') THEN "
        " DROP TABLE audit_log_partitioned;"
        "ELSIF EXISTS (SELECT 1 FROM pg_class WHERE relname = 'audit_log' AND relkind = 'p') THEN "
        " ALTER TABLE audit_log RENAME TO audit_log_partitioned;"
        " ALTER TABLE audit_log_partitioned RENAME CONSTRAINT pk_audit_log TO pk_audit_log_partitioned;"
        " ALTER INDEX ix_audit_log_action RENAME TO ix_audit_log_partitioned_action;"
        " CREATE TABLE audit_log (LIKE audit_log_partitioned INCLUDING DEFAULTS);"
        " INSERT INTO audit_log SELECT * FROM audit_log_partitioned;"
        " ALTER TABLE audit_log ADD CONSTRAINT pk_audit_log PRIMARY KEY (seq);"
        " CREATE INDEX ix_audit_log_action ON audit_log (action);"
        " DROP TABLE audit_log_partitioned;"
        "END IF; END $$"
    )
