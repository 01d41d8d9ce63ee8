"""ack ledger partitioned by month of its events (SPEC §13, coordinator/evidence/partitions.py)

Revision ID: 0025_ack_ledger_partitions
Revises: 0024_outbox_partitions
Create Date: 2026-12-06 10:45:00.000000

Adds `retention_ack_event_at(event_id, received_at)`, the ledger's partition key derived
from the record (the claimed event's minting time, or the epoch), and creates
`retention_ack_ledger_partitioned` (RANGE on `event_at`; both unique keys hold it; a
default partition and the current and next two months), taking its ids from the ledger's
sequence. An empty ledger (a new deployment) is swapped for it at once. A filled one
stays in place: `retention db partition` copies it batch by batch while `serve` runs and
swaps at the end, so this migration never holds a lock for longer than creating empty
tables.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from alembic import op

revision = '0025_ack_ledger_partitions'
down_revision = '0024_outbox_partitions'
branch_labels = None
depends_on = None

_T = 'retention_ack_ledger'
_S = 'retention_ack_ledger_partitioned'
_INDEXES = ('pk', 'uq_record', 'uq_ack', 'ix_rejected_event_id', 'ix_rejected_received_at')

EVENT_AT = """
CREATE FUNCTION retention_ack_event_at(event_id uuid, received_at timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN minted IS NOT NULL AND minted <= received_at THEN minted
              ELSE timestamptz '1970-01-01 00:00:00+00' END
  FROM (SELECT timestamptz '1970-01-01 00:00:00+00' + interval '1 millisecond'
          * ('x' || substr(replace(event_id::text, '-', ''), 1, 12))::bit(48)::bigint
        AS minted) m
$$
"""


def _months_ahead(count: int = 3) -> list[date]:
    now = datetime.now(UTC)
    first = date(now.year, now.month, 1)
    found = [first]
    while len(found) < count:
        y, m = found[-1].year, found[-1].month
        found.append(date(y + m // 12, m % 12 + 1, 1))
    return found


def _name(index: str, table: str) -> str:
    prefix, _, suffix = index.partition('_')
    return f"{prefix}_{table}_{suffix}" if suffix else f"{prefix}_{table}"


def _renames(old: str, new: str) -> str:
    return " ".join(
        [
            f"ALTER TABLE {old} RENAME TO {new};",
            *(f"ALTER INDEX {_name(i, old)} RENAME TO {_name(i, new)};" for i in _INDEXES),
        ]
    )


def upgrade() -> None:
    op.execute(EVENT_AT)
    op.execute(
        f"CREATE TABLE {_S} ("
        f" id BIGINT DEFAULT nextval('{_T}_id_seq'::regclass) NOT NULL,"
        " received_at TIMESTAMP WITH TIME ZONE NOT NULL,"
        " kafka_topic TEXT NOT NULL,"
        " kafka_partition INTEGER NOT NULL,"
        " kafka_offset BIGINT NOT NULL,"
        " event_id UUID,"
        " service TEXT,"
        " entity_type TEXT,"
        " entity_id TEXT,"
        " status TEXT,"
        " records_affected BIGINT,"
        " attempt INTEGER,"
        " detail TEXT,"
        " acknowledged_at TIMESTAMP WITH TIME ZONE,"
        " accepted BOOLEAN NOT NULL,"
        " reject_reason TEXT,"
        " audit_seq BIGINT,"
        " key_id TEXT,"
        " event_at TIMESTAMP WITH TIME ZONE NOT NULL,"
        f" CONSTRAINT pk_{_S} PRIMARY KEY (id, event_at),"
        f" CONSTRAINT uq_{_S}_record UNIQUE (kafka_topic, kafka_partition, kafka_offset, event_at)"
        ") PARTITION BY RANGE (event_at)"
    )
    op.execute(
        f"CREATE UNIQUE INDEX uq_{_S}_ack ON {_S} (event_id, service, attempt, status, event_at) "
        "WHERE accepted"
    )
    op.execute(f"CREATE INDEX ix_{_S}_rejected_event_id ON {_S} (event_id) WHERE NOT accepted")
    op.execute(
        f"CREATE INDEX ix_{_S}_rejected_received_at ON {_S} (received_at) WHERE NOT accepted"
    )
    op.execute(f"CREATE TABLE {_T}_default PARTITION OF {_S} DEFAULT")
    for first in _months_ahead():
        y, m = first.year, first.month
        end = date(y + m // 12, m % 12 + 1, 1)
        op.execute(
            f"CREATE TABLE {_T}_y{y:04d}m{m:02d} PARTITION OF {_S} "
            f"FOR VALUES FROM ('{first.isoformat()}T00:00:00+00:00') "
            f"TO ('{end.isoformat()}T00:00:00+00:00')"
        )
    # Empty (a new deployment): swap now; the sequence moves to the new table first, or
    # dropping the old one would take it along. Otherwise `retention db partition` does,
    # and until then the tracker writes `event_at` into the old table: the column comes
    # without a default, so adding it rewrites nothing (old rows' is computed when copied).
    op.execute(
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT 1 FROM {_T}) THEN "
        f" ALTER SEQUENCE {_T}_id_seq OWNED BY {_S}.id;"
        f" DROP TABLE {_T}; {_renames(_S, _T)} "
        f"ELSE ALTER TABLE {_T} ADD COLUMN event_at TIMESTAMP WITH TIME ZONE;"
        "END IF; END $$"
    )


def downgrade() -> None:
    # Back to one plain table, rows kept (the partitioned one, or the shadow left beside it).
    op.execute(
        "DO $$ BEGIN "
        f"IF EXISTS (SELECT 1 FROM pg_class WHERE relname = '{_S}') THEN "
        f" DROP TABLE {_S}; ALTER TABLE {_T} DROP COLUMN event_at;"
        f"ELSIF EXISTS (SELECT 1 FROM pg_class WHERE relname = '{_T}' AND relkind = 'p') THEN "
        f" {_renames(_T, _S)}"
        f" CREATE TABLE {_T} (LIKE {_S} INCLUDING DEFAULTS);"
        f" ALTER TABLE {_T} DROP COLUMN event_at;"
        f" INSERT INTO {_T} SELECT id, received_at, kafka_topic, kafka_partition, kafka_offset,"
        "  event_id, service, entity_type, entity_id, status, records_affected, attempt, detail,"
        f"  acknowledged_at, accepted, reject_reason, audit_seq, key_id FROM {_S};"
        f" ALTER SEQUENCE {_T}_id_seq OWNED BY {_T}.id;"
        f" ALTER TABLE {_T} ADD CONSTRAINT pk_{_T} PRIMARY KEY (id);"
        f" ALTER TABLE {_T} ADD CONSTRAINT uq_{_T}_record"
        "  UNIQUE (kafka_topic, kafka_partition, kafka_offset);"
        f" CREATE UNIQUE INDEX uq_{_T}_ack ON {_T} (event_id, service, attempt, status)"
        "  WHERE accepted;"
        f" CREATE INDEX ix_{_T}_rejected_event_id ON {_T} (event_id) WHERE NOT accepted;"
        f" CREATE INDEX ix_{_T}_rejected_received_at ON {_T} (received_at) WHERE NOT accepted;"
        f" DROP TABLE {_S};"
        "END IF; END $$"
    )
    op.execute("DROP FUNCTION retention_ack_event_at(uuid, timestamptz)")
