"""outbox batches partitioned by month (SPEC §13, coordinator/evidence/partitions.py)

Revision ID: 0024_outbox_partitions
Revises: 0023_republish_jobs
Create Date: 2026-12-06 10:50:00.000000

Creates `retention_outbox_batches_partitioned` (RANGE on `created_at`, primary key
(seq, created_at), the batch-id index no longer unique since it cannot hold the partition
key, a default partition and the current and next two months). An empty outbox (a new
deployment) is swapped for it at once. A filled one stays in place: `retention db
partition` copies it batch by batch while `serve` runs and swaps at the end, so this
migration never holds a lock for longer than creating empty tables.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from alembic import op

revision = '0024_outbox_partitions'
down_revision = '0023_republish_jobs'
branch_labels = None
depends_on = None

_T = 'retention_outbox_batches'
_S = 'retention_outbox_batches_partitioned'
_INDEXES = ('_ids', '_request_id', '_run_id')


def _months_ahead(count: int = 3) -> list[date]:
    now = datetime.now(UTC)
    first = date(now.year, now.month, 1)
    found = [first]
    while len(found) < count:
        y, m = found[-1].year, found[-1].month
        found.append(date(y + m // 12, m % 12 + 1, 1))
    return found


def _indexes(table: str) -> list[str]:
    return [
        f"CREATE INDEX ix_{table}_ids ON {table} (id_base, id_first)",
        f"CREATE INDEX ix_{table}_request_id ON {table} (request_id) "
        "WHERE request_id IS NOT NULL",
        f"CREATE INDEX ix_{table}_run_id ON {table} (run_id, seq) WHERE run_id IS NOT NULL",
    ]


def _renames(old: str, new: str) -> str:
    return " ".join(
        [
            f"ALTER TABLE {old} RENAME TO {new};",
            f"ALTER TABLE {new} RENAME CONSTRAINT pk_{old} TO pk_{new};",
            *(f"ALTER INDEX ix_{old}{s} RENAME TO ix_{new}{s};" for s in _INDEXES),
        ]
    )


def upgrade() -> None:
    op.execute(
        f"CREATE TABLE {_S} ("
        " seq BIGINT NOT NULL,"
        " id_base UUID NOT NULL,"
        " id_first BIGINT NOT NULL,"
        " events INTEGER NOT NULL,"
        " run_id UUID,"
        " policy TEXT NOT NULL,"
        " event_type TEXT NOT NULL,"
        " entity_type TEXT NOT NULL,"
        " legal_basis TEXT NOT NULL,"
        " fields JSONB DEFAULT '[]'::jsonb NOT NULL,"
        " initiated_at TIMESTAMP WITH TIME ZONE NOT NULL,"
        " deadline TIMESTAMP WITH TIME ZONE NOT NULL,"
        " reason TEXT DEFAULT 'retention_policy' NOT NULL,"
        " request_id UUID,"
        " entity_ids TEXT[] NOT NULL,"
        " subjects TEXT[],"
        " created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,"
        f" CONSTRAINT pk_{_S} PRIMARY KEY (seq, created_at)"
        ") PARTITION BY RANGE (created_at)"
    )
    for statement in _indexes(_S):
        op.execute(statement)
    op.execute(f"CREATE TABLE {_T}_default PARTITION OF {_S} DEFAULT")
    for first in _months_ahead():
        y, m = first.year, first.month
        end = date(y + m // 12, m % 12 + 1, 1)
        op.execute(
            f"CREATE TABLE {_T}_y{y:04d}m{m:02d} PARTITION OF {_S} "
            f"FOR VALUES FROM ('{first.isoformat()}T00:00:00+00:00') "
            f"TO ('{end.isoformat()}T00:00:00+00:00')"
        )
    # Empty (a new deployment): swap now. Otherwise `retention db partition` does.
    op.execute(
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT 1 FROM {_T}) THEN "
        f" DROP TABLE {_T}; {_renames(_S, _T)} "
        "END IF; END $$"
    )


def downgrade() -> None:
    # Back to one plain table, rows kept (the partitioned one, or the shadow left beside it).
    op.execute(
        "DO $$ BEGIN "
        f"IF EXISTS (SELECT 1 FROM pg_class WHERE relname = '{_S}') THEN "
        f" DROP TABLE {_S};"
        f"ELSIF EXISTS (SELECT 1 FROM pg_class WHERE relname = '{_T}' AND relkind = 'p') THEN "
        f" {_renames(_T, _S)}"
        f" CREATE TABLE {_T} (LIKE {_S} INCLUDING DEFAULTS);"
        f" INSERT INTO {_T} SELECT * FROM {_S};"
        f" ALTER TABLE {_T} ADD CONSTRAINT pk_{_T} PRIMARY KEY (seq);"
        f" CREATE UNIQUE INDEX ix_{_T}_ids ON {_T} (id_base, id_first);"
        f" CREATE INDEX ix_{_T}_request_id ON {_T} (request_id) WHERE request_id IS NOT NULL;"
        f" CREATE INDEX ix_{_T}_run_id ON {_T} (run_id, seq) WHERE run_id IS NOT NULL;"
        f" DROP TABLE {_S};"
        "END IF; END $$"
    )
