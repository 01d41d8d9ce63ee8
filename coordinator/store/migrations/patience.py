"""Schema changes on busy tables (migrations 0031 on).

An `ALTER TABLE` queued behind the tracker's long transactions would block every
statement queued behind it, so `patiently` gives each try up after `LOCK_TIMEOUT` and
lets them by. An index is built CONCURRENTLY (no lock that readers or writers wait
for), and `build_index_concurrently` finishes what an interrupted build left.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

LOCK_TIMEOUT = "2s"
LOCK_TRIES = 150
LOCK_PAUSE_S = 1

# Each try a subtransaction: one given up releases what it took and leaves the queue.
_PATIENT = """DO $$ BEGIN
  {guard}PERFORM set_config('lock_timeout', '{timeout}', true);
  FOR attempt IN 1..{tries} LOOP
    BEGIN
      {sql};
      RETURN;
    EXCEPTION WHEN lock_not_available THEN
      IF attempt = {tries} THEN
        RAISE EXCEPTION USING ERRCODE = 'lock_not_available', MESSAGE = format(
          '{revision}: %s stayed locked through %s tries; run the {step} again',
          '{table}', {tries});
      END IF;
      PERFORM pg_sleep({pause});
    END;
  END LOOP;
END $$"""


def patiently(
    revision: str, table: str, sql: str, *, if_exists: bool = False, step: str = "upgrade"
) -> None:
    """Run `sql` (which locks `table`), waiting for the lock a try at a time; with
    `if_exists`, nothing when `table` does not exist. `revision` and `step` name what to
    run again in the error of the last try."""
    guard = f"IF to_regclass('{table}') IS NULL THEN RETURN; END IF;\n  " if if_exists else ""
    op.execute(
        _PATIENT.format(
            guard=guard,
            revision=revision,
            step=step,
            table=table,
            sql=sql,
            timeout=LOCK_TIMEOUT,
            tries=LOCK_TRIES,
            pause=LOCK_PAUSE_S,
        )
    )


def build_index_concurrently(index: str, definition: str) -> None:
    """`CREATE INDEX CONCURRENTLY index definition` (`definition`: "ON table (...) ..."),
    unless a valid index of that name exists. Run inside an autocommit block."""
    valid = (
        op.get_bind()
        .execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:ix)"),
            {"ix": index},
        )
        .scalar()
    )
    if valid:
        return
    if valid is not None:
        # What an interrupted CONCURRENTLY build leaves: an invalid index, never used.
        op.execute(f"DROP INDEX CONCURRENTLY {index}")
    op.execute(f"CREATE INDEX CONCURRENTLY {index} {definition}")
