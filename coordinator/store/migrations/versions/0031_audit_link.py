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

It runs with trackers up. Each statement commits on its own, so the migration never
holds one table's lock while waiting for another's: an ack batch takes its events' status
rows, then the ledger, then the audit log, but the tracking pass reads the audit log's
head before it inserts status rows, so no single order of the three `ALTER`s inside one
transaction avoids a deadlock with both. The tables are still altered in the ack batch's
order. The index is built CONCURRENTLY (a partitioned log: each partition's, attached to
an index on the parent alone), so the audit log's writers and readers go on meanwhile.
Every step checks what an interrupted run left, so running it again finishes it.

A statement that takes a table's lock (the `ALTER`s, the parent index and each attach)
waits for it at most `LOCK_TIMEOUT` (migrations/patience.py), then gives it up and
tries again after a pause, up to `LOCK_TRIES` times: queued behind a long transaction it would otherwise hold up
every writer that queues behind it for as long. The `CONCURRENTLY` builds and drops
take no lock writers wait for and wait as long as they need. (Added after the
migration was first released: it changes only how the statements wait, not what they
do, so a database that ran it is as this version leaves it.)
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

from coordinator.store.migrations.patience import build_index_concurrently, patiently

revision = "0031_audit_link"
down_revision = "0030_ack_row_event_ms"
branch_labels = None
depends_on = None

_IF_EXISTS = "DO $$ BEGIN IF to_regclass('{table}') IS NOT NULL THEN {sql}; END IF; END $$"



def _patiently(table: str, sql: str) -> None:
    """Run `sql` if `table` exists, waiting for its locks a moment at a time."""
    patiently("0031", table, sql, if_exists=True)


_ENTRY_ACTIONS = (
    ("retention_ack_ledger", "audit_seq", "audit_link",
     "CASE WHEN t.accepted THEN 'acks_accepted' ELSE 'acks_rejected' END"),
    ("retention_ack_ledger_partitioned", "audit_seq", "audit_link",
     "CASE WHEN t.accepted THEN 'acks_accepted' ELSE 'acks_rejected' END"),
    ("retention_event_status", "completed_audit_seq", "completed_audit_link",
     "'events_completed'"),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE SEQUENCE IF NOT EXISTS retention_audit_link_seq")
        for table, column in (
            ("retention_event_status", "completed_audit_link"),
            ("retention_ack_ledger", "audit_link"),
            ("retention_ack_ledger_partitioned", "audit_link"),
            ("audit_log", "link"),
            ("audit_log_partitioned", "link"),
        ):
            _patiently(table, f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} bigint")
        for table in ("audit_log", "audit_log_partitioned"):
            _index_link(table)


def _index_link(table: str) -> None:
    bind = op.get_bind()
    kind = bind.execute(
        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
    ).scalar()
    if kind is None:
        return
    index = f"ix_{table}_link"
    if kind != "p":
        build_index_concurrently(index, f"ON {table} (link) WHERE link IS NOT NULL")
        return
    # CONCURRENTLY builds no index on a partitioned table: one on the parent alone (invalid
    # until every partition's is attached, cloned onto partitions created meanwhile),
    # then each partition's, attached.
    _patiently(
        table, f"CREATE INDEX IF NOT EXISTS {index} ON ONLY {table} (link) WHERE link IS NOT NULL"
    )
    partitions = bind.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(:t) ORDER BY c.relname"
        ),
        {"t": table},
    ).scalars().all()
    for partition in partitions:
        attached = bind.execute(
            text(
                "SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid"
                " WHERE i.inhparent = to_regclass(:ix) AND x.indrelid = to_regclass(:p)"
            ),
            {"ix": index, "p": partition},
        ).scalar()
        if attached:
            continue
        build_index_concurrently(
            f"{partition}_link_idx", f"ON {partition} (link) WHERE link IS NOT NULL"
        )
        _patiently(table, f"ALTER INDEX {index} ATTACH PARTITION {partition}_link_idx")


def downgrade() -> None:
    # The previous version reads only the seqs: write each link's entry seq back first, or
    # every ack and completion recorded since this migration would lose its evidence.
    for table, seq, link, action in _ENTRY_ACTIONS:
        op.execute(
            _IF_EXISTS.format(
                table=table,
                sql=f"UPDATE {table} t SET {seq} = l.seq FROM audit_log l"
                f" WHERE t.{link} IS NOT NULL AND l.link = t.{link} AND l.action = {action}",
            )
        )
    op.execute("ALTER TABLE retention_event_status DROP COLUMN completed_audit_link")
    for table in ("retention_ack_ledger", "retention_ack_ledger_partitioned"):
        op.execute(
            _IF_EXISTS.format(table=table, sql=f"ALTER TABLE {table} DROP COLUMN audit_link")
        )
    for table in ("audit_log", "audit_log_partitioned"):
        op.execute(_IF_EXISTS.format(table=table, sql=f"ALTER TABLE {table} DROP COLUMN link"))
    op.execute("DROP SEQUENCE retention_audit_link_seq")
