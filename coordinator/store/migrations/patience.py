"""Schema changes that wait for a busy table's lock a moment at a time (migrations 0031
on): an `ALTER TABLE` queued behind the tracker's long transactions would block every
statement queued behind it, so each try gives up after `LOCK_TIMEOUT` and lets them by.
"""

from __future__ import annotations

from alembic import op

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
