"""Policies checked against the live database, by reflection, and bound to its tables.

Nothing here trusts a name from the policy file: every table and column is looked up in
the reflected schema first, and only the reflected `Table`/`Column` objects reach SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, Table, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from coordinator.policy import anonymizers
from coordinator.policy.conditions import ConditionError, compile_condition
from coordinator.policy.model import (
    Action,
    BeforePurge,
    Policy,
    PolicyIssue,
    PolicySet,
    Subject,
    resolve_hook,
)
from coordinator.purge.archive import ARCHIVED_AT, KEY_ID, SEALED, archive_definition, clear_columns
from coordinator.settings import Settings
from coordinator.store.tables import metadata as coordinator_metadata

__all__ = ["ARCHIVED_AT", "BoundPolicy", "bind_policies"]

_MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names silently


@dataclass(frozen=True)
class BoundPolicy:
    """A policy whose names all resolved to reflected schema objects."""

    policy: Policy
    table: Table
    id_column: Column[Any]
    timestamp_column: Column[Any]
    condition: ColumnElement[bool] | None
    archive: Table | None
    archive_exists: bool
    hook: BeforePurge | None
    hash_key: bytes
    subject: Subject | None = None
    subject_column: Column[Any] | None = None
    archive_clear: tuple[str, ...] = ()
    """The archive's columns kept in clear (id, timestamp, subject id)."""

    @property
    def name(self) -> str:
        return self.policy.name


def _is_unique(connection: Connection, table: Table, column: str) -> bool:
    if [c.name for c in table.primary_key.columns] == [column]:
        return True
    inspector = inspect(connection)
    if any(uc["column_names"] == [column] for uc in inspector.get_unique_constraints(table.name)):
        return True
    return any(
        ix["unique"] and ix["column_names"] == [column] for ix in inspector.get_indexes(table.name)
    )


def _bind_one(
    connection: Connection, policy_set: PolicySet, policy: Policy, hash_key: bytes
) -> tuple[BoundPolicy | None, list[PolicyIssue]]:
    issues: list[PolicyIssue] = []

    def issue(key: str, message: str) -> None:
        issues.append(PolicyIssue(policy.name, policy_set.line(policy.name, key), message))

    if policy.table in coordinator_metadata.tables:
        issue("table", f"table {policy.table!r} belongs to the coordinator itself")
        return None, issues
    inspector = inspect(connection)
    if not inspector.has_table(policy.table):
        issue("table", f"table {policy.table!r} does not exist")
        return None, issues
    table = Table(policy.table, MetaData(), autoload_with=connection)

    id_column = table.c.get(policy.id_column)
    if id_column is None:
        issue("id_column", f"table {policy.table!r} has no column {policy.id_column!r}")
    elif not _is_unique(connection, table, policy.id_column):
        # Keyset batching (`id > last`) needs unique ids, or rows at a boundary are lost.
        issue("id_column", f"{policy.id_column!r} is neither the primary key nor unique")
    ts_column = table.c.get(policy.timestamp_column)
    if ts_column is None:
        issue(
            "timestamp_column",
            f"table {policy.table!r} has no column {policy.timestamp_column!r}",
        )
    elif not isinstance(ts_column.type, DateTime):
        issue(
            "timestamp_column",
            f"column {policy.timestamp_column!r} is {ts_column.type}, "
            "not timestamp / timestamp with time zone",
        )

    for column_name, strategy_name in policy.anonymize.items():
        column = table.c.get(column_name)
        if column is None:
            issue("anonymize", f"table {policy.table!r} has no column {column_name!r}")
            continue
        strategy = anonymizers.get(strategy_name)
        problem = strategy.incompatible(column)
        if problem:
            issue("anonymize", f"{column_name}: {strategy_name}: {problem}")
        if strategy.needs_secret and not hash_key:
            issue("anonymize", f"{column_name}: {strategy_name} needs RETENTION_HASH_SECRET set")

    subject = policy_set.subject_of(policy)
    subject_column = None
    if subject is not None:
        subject_column = table.c.get(subject.column)
        if subject_column is None:
            issue("subject", f"table {policy.table!r} has no column {subject.column!r}")

    condition = None
    if policy.conditions is not None:
        try:
            condition = compile_condition(policy.conditions, table)
        except ConditionError as exc:
            issue("conditions", f"conditions: {exc}")

    archive, archive_exists, clear = None, False, [policy.id_column, policy.timestamp_column]
    if subject is not None:
        clear.append(subject.column)
    clear = clear_columns(table, clear)
    if policy.action is Action.ARCHIVE:
        name = f"{policy.table}_archive"
        if len(name) > _MAX_IDENTIFIER:
            issue("table", f"archive table name {name!r} is longer than {_MAX_IDENTIFIER}")
        elif inspector.has_table(name):
            archive_exists = True
            archive = Table(name, MetaData(), autoload_with=connection)
            if SEALED not in archive.c:
                issue(
                    "action",
                    f"archive table {name!r} is a plain (unencrypted) archive: encrypt it in "
                    f"place with `retention archive encrypt --policy {policy.name}`",
                )
            elif archive.c[SEALED].nullable:
                issue(
                    "action",
                    f"archive table {name!r} is being encrypted in place: finish with "
                    f"`retention archive encrypt --policy {policy.name}` (it resumes)",
                )
            elif missing := [c for c in [*clear, ARCHIVED_AT, KEY_ID] if c not in archive.c]:
                issue("action", f"archive table {name!r} lacks column(s) {', '.join(missing)}")
        else:
            archive = archive_definition(table, clear)

    # The module was checked against the allowed ones when the file was parsed.
    hook = resolve_hook(policy.before_purge) if policy.before_purge else None
    if issues or id_column is None or ts_column is None:
        return None, issues
    return (
        BoundPolicy(
            policy=policy,
            table=table,
            id_column=id_column,
            timestamp_column=ts_column,
            condition=condition,
            archive=archive,
            archive_exists=archive_exists,
            archive_clear=tuple(clear),
            hook=hook,
            hash_key=hash_key,
            subject=subject,
            subject_column=subject_column,
        ),
        issues,
    )


async def bind_policies(
    conn: AsyncConnection,
    policy_set: PolicySet,
    settings: Settings,
    *,
    only: Sequence[str] | None = None,
) -> tuple[dict[str, BoundPolicy], dict[str, list[PolicyIssue]]]:
    """Reflect each policy's table; return the bound policies and every policy's issues."""
    hash_key = settings.hash_secret.get_secret_value().encode()
    selected = [p for p in policy_set.policies if only is None or p.name in only]

    def bind(connection: Connection) -> tuple[dict[str, BoundPolicy], dict[str, list[PolicyIssue]]]:
        bound: dict[str, BoundPolicy] = {}
        issues: dict[str, list[PolicyIssue]] = {}
        for policy in selected:
            result, problems = _bind_one(connection, policy_set, policy, hash_key)
            if result is not None:
                bound[policy.name] = result
            if problems:
                issues[policy.name] = problems
        return bound, issues

    return await conn.run_sync(bind)
