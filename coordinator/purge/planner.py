"""What is due: cutoffs, the due/held predicates, counts for the guard, keyset batches.

Which "now"
-----------
A retention cutoff computed from a clock that runs ahead would purge young rows, and a
hold expiry read from it would end holds early. So the planner's `now` is
`min(injected clock, database clock)`: the injectable clock still steers tests (they set
it at or before the real time), but a coordinator whose clock jumped hours ahead cannot
make anything due sooner than the database — whose clock stamped the rows — says. A
clock running behind only delays purges, the safe direction. The skew is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    DateTime,
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import CTE, ScalarSelect, Select

from coordinator.clock import Clock
from coordinator.policy.binding import BoundPolicy
from coordinator.policy.model import Action, Policy
from coordinator.purge.holds import active_hold_exists
from coordinator.store.tables import anonymized

__all__ = [
    "Batch",
    "DueCount",
    "Leftover",
    "PolicyPlan",
    "TimeBase",
    "Window",
    "batch_window",
    "count_due",
    "due_clause",
    "guard_error",
    "held_clause",
    "leftover",
    "next_batch",
    "oldest_due",
    "oldest_due_query",
    "plan_policy",
    "time_base",
    "timestamp_value",
    "unheld_clause",
]

_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class TimeBase:
    now: datetime
    clock: datetime
    database: datetime

    @property
    def skew_seconds(self) -> float:
        """How far the injected clock runs ahead of the database (negative: behind)."""
        return (self.clock - self.database).total_seconds()


async def time_base(conn: AsyncConnection, clock: Clock) -> TimeBase:
    database = (await conn.execute(select(func.statement_timestamp()))).scalar_one()
    app = clock.now()
    return TimeBase(now=min(app, database), clock=app, database=database)


def timestamp_value(bound: BoundPolicy, value: datetime) -> ColumnElement[Any]:
    column_type = bound.timestamp_column.type
    if isinstance(column_type, DateTime) and not column_type.timezone:
        # Naive timestamp columns are read as UTC.
        return literal(value.astimezone(UTC).replace(tzinfo=None), DateTime())
    return literal(value, DateTime(timezone=True))


def cutoff_for(policy: Policy, now: datetime) -> datetime:
    return now - policy.retention


def due_clause(
    bound: BoundPolicy, cutoff: datetime, *, with_ledger: bool = True
) -> ColumnElement[bool]:
    """Past retention (NULL timestamps never are), in scope, and not yet anonymized."""
    clauses: list[ColumnElement[bool]] = [bound.timestamp_column < timestamp_value(bound, cutoff)]
    if bound.condition is not None:
        clauses.append(bound.condition)
    if with_ledger and bound.policy.action is Action.ANONYMIZE:
        clauses.append(
            not_(
                exists(
                    select(1).where(
                        anonymized.c.policy == bound.name,
                        anonymized.c.entity_id == cast(bound.id_column, Text),
                        anonymized.c.fields.contains(literal(bound.policy.fields, ARRAY(Text))),
                    )
                )
            )
        )
    return and_(*clauses)


def _hold_checks(
    bound: BoundPolicy,
    now: datetime,
    within: tuple[ColumnElement[str], ColumnElement[str]] | None = None,
) -> list[ColumnElement[bool]]:
    """One EXISTS per way a hold can cover a row: its entity, and its subject (SPEC §11).
    `within`: bounds of the rows' ids as text (`active_hold_exists`); subjects have none."""
    checks = [active_hold_exists(bound.policy.entity_type, bound.id_column, now, within=within)]
    subject, column = bound.subject, bound.subject_column
    is_itself = (
        subject is not None
        and subject.entity_type == bound.policy.entity_type
        and column is bound.id_column
    )
    if subject is not None and column is not None and not is_itself:
        checks.append(active_hold_exists(subject.entity_type, column, now))
    return checks


def held_clause(bound: BoundPolicy, now: datetime) -> ColumnElement[bool]:
    """A hold covers the row itself, or the subject it belongs to."""
    return or_(*_hold_checks(bound, now))


def unheld_clause(
    bound: BoundPolicy,
    now: datetime,
    within: tuple[ColumnElement[str], ColumnElement[str]] | None = None,
) -> ColumnElement[bool]:
    """No hold covers the row: one NOT EXISTS per check, so that PostgreSQL can plan each
    as its own hashed anti-join, as it does for the entity check alone."""
    return and_(*(not_(check) for check in _hold_checks(bound, now, within)))


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    policy: str
    action: str
    cutoff: datetime
    now: datetime
    due: int
    held: int
    total: int
    oldest_due: datetime | None
    guard: str | None

    @property
    def oldest_age_days(self) -> float | None:
        return _age_days(self.now, self.oldest_due)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "action": self.action,
            "cutoff": self.cutoff.isoformat(),
            "due": self.due,
            "held": self.held,
            "table_rows": self.total,
            "oldest_due_age_days": self.oldest_age_days,
            "guard": self.guard,
        }


def guard_error(policy: Policy, due: int, total: int) -> str | None:
    """Why the mass-deletion guard refuses this run, naming both limits; None if it allows it."""
    fraction = due / total if total else 0.0
    over_rows = policy.max_rows_per_run is not None and due > policy.max_rows_per_run
    over_fraction = policy.max_fraction is not None and fraction > policy.max_fraction
    if not (over_rows or over_fraction):
        return None
    exceeded = [
        name
        for name, over in (("max_rows_per_run", over_rows), ("max_fraction", over_fraction))
        if over
    ]
    return (
        f"mass-deletion guard: {due} due rows = {fraction:.2%} of {total}; "
        f"limits max_rows_per_run={policy.max_rows_per_run} and "
        f"max_fraction={policy.max_fraction} (exceeded: {', '.join(exceeded)}); "
        "nothing was touched — rerun with --force if this is intended"
    )


def _after(bound: BoundPolicy, after: Any | None) -> ColumnElement[bool]:
    if after is None:
        return true()
    return bound.id_column > bindparam("after", after, type_=bound.id_column.type)


async def plan_policy(
    conn: AsyncConnection, bound: BoundPolicy, now: datetime, *, after: Any | None = None
) -> PolicyPlan:
    """Count due, held and all rows, and find the oldest due row.

    Hold and ledger checks sit in WHERE clauses, not in FILTER aggregates, so PostgreSQL
    can run them as hashed anti/semi joins instead of one subquery per row. `after`:
    an anonymize policy's mark (coordinator/purge/marks.py); no row at or below it is
    due, so the due and held counts skip them.
    """
    cutoff = cutoff_for(bound.policy, now)
    due = and_(due_clause(bound, cutoff), _after(bound, after))
    unheld = (
        select(func.count().label("due"), func.min(bound.timestamp_column).label("oldest"))
        .select_from(bound.table)
        .where(due, unheld_clause(bound, now))
        .subquery("unheld")
    )
    # One round trip; held = due − unheld, so both counts use only anti-joins (see
    # unheld_clause).
    counts = (
        await conn.execute(
            select(
                select(func.count()).select_from(bound.table).scalar_subquery().label("total"),
                select(func.count())
                .select_from(bound.table)
                .where(due)
                .scalar_subquery()
                .label("all_due"),
                unheld.c.due,
                unheld.c.oldest,
            )
        )
    ).one()
    total = counts.total
    held_count = counts.all_due - counts.due
    oldest = counts.oldest
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return PolicyPlan(
        policy=bound.name,
        action=bound.policy.action.value,
        cutoff=cutoff,
        now=now,
        due=counts.due,
        held=held_count,
        total=total,
        oldest_due=oldest,
        guard=guard_error(bound.policy, counts.due, total),
    )


@dataclass(frozen=True, slots=True)
class DueCount:
    """What a run needs to know before it starts: the due, unheld rows and whether the
    guard refuses them (`plan_policy` then says why, with the held count and the
    table's size)."""

    cutoff: datetime
    due: int
    refused: bool


async def count_due(
    conn: AsyncConnection, bound: BoundPolicy, now: datetime, *, after: Any | None = None
) -> DueCount:
    """Count the due, unheld rows for the guard: one pass over the table (`plan_policy`
    makes three), plus a count of the whole table only for a `max_fraction` guard."""
    cutoff = cutoff_for(bound.policy, now)
    due = (
        select(func.count())
        .select_from(bound.table)
        .where(due_clause(bound, cutoff), _after(bound, after), unheld_clause(bound, now))
        .scalar_subquery()
    )
    columns = [due.label("due")]
    if bound.policy.max_fraction is not None:
        total = select(func.count()).select_from(bound.table).scalar_subquery()
        columns.append(total.label("total"))
    counts = (await conn.execute(select(*columns))).one()
    # Without a max_fraction the table's size decides nothing.
    total = counts.total if bound.policy.max_fraction is not None else counts.due
    return DueCount(cutoff, counts.due, guard_error(bound.policy, counts.due, total) is not None)


@dataclass(frozen=True, slots=True)
class Leftover:
    """What a run left due: the rows a hold keeps, and the oldest unheld one."""

    held: int
    oldest_age_days: float | None


async def leftover(
    conn: AsyncConnection, bound: BoundPolicy, now: datetime, *, after: Any | None = None
) -> Leftover:
    """Count the due rows a hold keeps and find the oldest unheld one: two passes over
    the table in one statement (`plan_policy` makes three), each check a hashed join.

    Not `oldest_due`'s index read: after an anonymize run every row it anonymized sits in
    front of the oldest unprocessed one in timestamp order, and that read would probe the
    ledger for each (0.9 s for 188,000 rows, measured).
    """
    cutoff = cutoff_for(bound.policy, now)
    due = and_(due_clause(bound, cutoff), _after(bound, after))
    row = (
        await conn.execute(
            select(
                select(func.count())
                .select_from(bound.table)
                .where(due, held_clause(bound, now))
                .scalar_subquery()
                .label("held"),
                select(func.min(bound.timestamp_column))
                .where(due, unheld_clause(bound, now))
                .scalar_subquery()
                .label("oldest"),
            )
        )
    ).one()
    return Leftover(row.held, _age_days(now, row.oldest))


def oldest_due_query(bound: BoundPolicy, now: datetime, after: Any | None = None) -> Select[Any]:
    """The oldest due, unheld row's timestamp, without counting anything.

    `min(ts)` spelled `ORDER BY ts LIMIT 1` under `ts < cutoff`: PostgreSQL rewrites a
    bare `min()` into an index read only for a single table, and the hold check is a
    join. With an index on the timestamp column it reads that index from its oldest end
    and stops at the first row that is due and not held, so the cost is the held (or
    out-of-scope) rows older than that one, not the table (tests/policy/test_oldest_due.py
    checks the plan). Without such an index it is a sequential scan that stops at the
    first hit of a sort-free top-1: docs/operations.md asks for the index.
    """
    cutoff = cutoff_for(bound.policy, now)
    ts = bound.timestamp_column
    return (
        select(ts)
        .where(due_clause(bound, cutoff), _after(bound, after), unheld_clause(bound, now))
        .order_by(ts)
        .limit(1)
    )


async def oldest_due(
    conn: AsyncConnection, bound: BoundPolicy, now: datetime, *, after: Any | None = None
) -> float | None:
    """Age in days of the oldest due, unheld row (None: nothing due)."""
    oldest = (await conn.execute(oldest_due_query(bound, now, after))).scalar_one_or_none()
    return _age_days(now, oldest)


def _age_days(now: datetime, oldest: datetime | None) -> float | None:
    """Days from `oldest` (naive: UTC, as a `timestamp` column reads) to `now`."""
    if oldest is None:
        return None
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return round((now - oldest).total_seconds() / _DAY, 3)


@dataclass(frozen=True, slots=True)
class Batch:
    """Due, unheld ids to purge now, and the key the next batch starts after."""

    ids: Sequence[Any]
    last_scanned: Any | None  # None: nothing left to scan
    # Anonymize: some ids already have a ledger row (the policy gained a field since),
    # so the ledger write must update; otherwise a plain insert, about half the cost.
    relabel: bool = False
    # Anonymize: every row in the key range scanned is due (timestamp and conditions),
    # so once the batch commits each is anonymized or held, and the policy's mark may
    # move past them (coordinator/purge/marks.py).
    contiguous: bool = False
    # The window held fewer rows than its limit: nothing after `last_scanned` was due (or
    # in scope) when the batch ran, so a next batch would find nothing. Rows that become
    # due later wait for the next run, as those the guard did not count do.
    exhausted: bool = False


@dataclass(frozen=True, slots=True)
class Window:
    """The next keyset window of a policy, as SQL to embed in one statement.

    `last` is the window's last key (NULL: nothing left to scan); `chosen` selects the
    rows of the window to purge: due, unheld, in the primary-key range the window spans;
    `window` is the CTE of the window's due rows, `seen` their number.
    """

    last: ScalarSelect[Any]
    chosen: ColumnElement[bool]
    window: CTE
    seen: ScalarSelect[Any]
    limit: int

    def exhausted(self, seen: int) -> bool:
        return seen < self.limit


def batch_window(
    bound: BoundPolicy,
    *,
    cutoff: datetime,
    now: datetime,
    after: Any | None,
    limit: int,
    scope: ColumnElement[bool] | None = None,
) -> Window:
    """The next window of `limit` due rows after `after` in id order, minus held ones.

    Keyset windows mean each run reads every row at most once: held or already
    anonymized rows are stepped over with the window, never scanned again, and each
    batch costs O(limit) however large the table, the holds or the ledger grow. The
    window is materialized, and its last key bounds a primary-key range scan for the
    rows chosen (cheaper than probing the index once per window id). Whoever embeds
    `chosen` locks the rows (FOR UPDATE, or the DELETE itself), so PostgreSQL re-checks
    the full predicate against a row a concurrent update made young again; holds are
    read after the batch's hold lock, since the statement runs after it.

    `scope` replaces "due" as what the window looks for: an erasure request's rows of
    one subject, whatever their age (coordinator.erasure.execute).
    """
    id_column = bound.id_column
    wanted = scope if scope is not None else due_clause(bound, cutoff, with_ledger=False)
    window_query = select(id_column.label("id")).where(wanted).order_by(id_column).limit(limit)
    chosen: list[ColumnElement[bool]] = []
    start = bindparam("after", after, type_=id_column.type)
    if after is not None:
        window_query = window_query.where(id_column > start)
        chosen.append(id_column > start)
    window = window_query.cte("window")
    # A CTE of its own, so that the statement computes it once however often it names it.
    if isinstance(id_column.type, Integer | String):
        # One pass over the window for both: a top-N sort and a second count cost a
        # batch ~0.7 ms more of PostgreSQL's CPU (measured, 5,000-row windows). max()
        # orders as the window's ORDER BY does (a text key: the same collation).
        edge = select(func.max(window.c.id).label("id"), func.count().label("seen")).cte("edge")
        seen = select(edge.c.seen).scalar_subquery()
    else:
        # No max() for every key type (uuid has none): the last key by a top-N sort.
        edge = select(window.c.id).order_by(window.c.id.desc()).limit(1).cte("edge")
        seen = select(func.count()).select_from(window).scalar_subquery()
    last = select(edge.c.id).scalar_subquery()
    within = _text_bounds(bound, start, last) if after is not None else None
    chosen += [id_column <= last, wanted, unheld_clause(bound, now, within)]
    return Window(last, and_(*chosen), window, seen, limit)


# Longer than any integer key's text: 19 digits and a sign at most.
_ABOVE_ANY_INTEGER = "9" * 20


def _text_bounds(
    bound: BoundPolicy, after: ColumnElement[Any], last: ScalarSelect[Any]
) -> tuple[ColumnElement[str], ColumnElement[str]] | None:
    """Text bounds of the ids in the window (`after`, `last`] of an integer key, so that
    a batch's hold check reads the type's holds in that range of the hold index instead
    of hashing every hold of the type (a sequential read that grows with the holds:
    ~2.5 ms of a 5,000-row batch's ~10 ms at 10,000 holds, measured).

    Text order is not integer order ("10" < "9"), except among the decimal texts of one
    length without a sign: there, in any collation that sorts the digits 0 to 9 (every
    libc and ICU default does; only a tailored ICU rule could reorder them), the order
    is the digits' (strings of one length compare digit by digit). So
    when `after` ≥ 0 and `after` and `last` have as many digits, every id in the window
    has a text between theirs. Otherwise (the window crosses a power of ten, or
    starts below zero) the bounds are '' and twenty nines, between which lies every
    integer's text in such a collation (none is empty; nineteen digits and a sign at
    most, a sign sorting before a digit or ignored): the whole type, as without bounds.
    Other key types: no bounds (their text order need not be the key's).
    """
    if not isinstance(bound.id_column.type, Integer):
        return None
    low, high = cast(after, Text), cast(last, Text)
    same = and_(after >= 0, func.length(low) == func.length(high))
    return (
        case((same, low), else_=literal("", Text)),
        case((same, high), else_=literal(_ABOVE_ANY_INTEGER, Text)),
    )


async def next_batch(
    conn: AsyncConnection,
    bound: BoundPolicy,
    *,
    cutoff: datetime,
    now: datetime,
    after: Any | None,
    limit: int,
    scope: ColumnElement[bool] | None = None,
) -> Batch:
    """Select and lock the next batch (`batch_window`) in one statement, one result row.

    The chosen ids come back as one array instead of thousands of rows through the
    result machinery (what the profile showed).
    """
    id_column = bound.id_column
    window = batch_window(bound, cutoff=cutoff, now=now, after=after, limit=limit, scope=scope)
    last = window.last
    chosen = (
        select(id_column.label("id"))
        .where(window.chosen)
        .order_by(id_column)
        .with_for_update(of=bound.table)
        .cte("chosen")
    )
    ids_type = ARRAY(id_column.type)
    columns = [
        last.label("last"),
        window.seen.label("seen"),
        select(type_coerce(func.array_agg(aggregate_order_by(chosen.c.id, chosen.c.id)), ids_type))
        .scalar_subquery()
        .label("ids"),
    ]
    anonymize = bound.policy.action is Action.ANONYMIZE
    # An erasure request's scope says nothing about the policy's prefix: no mark moves.
    marking = anonymize and scope is None
    if marking:
        # Every row of the scanned key range, due or not (an index-only range count),
        # against the window's due rows: equal when nothing young or out of scope is in it.
        in_range = [id_column <= last]
        if after is not None:
            in_range.append(id_column > bindparam("after", after, type_=id_column.type))
        columns.append(select(func.count()).where(*in_range).scalar_subquery().label("in_range"))
    row = (await conn.execute(select(*columns))).one()
    if row.last is None:
        return Batch((), None, exhausted=True)
    ids = list(row.ids or ())
    exhausted = window.exhausted(row.seen)
    if not anonymize:
        return Batch(ids, row.last, exhausted=exhausted)
    contiguous = marking and row.seen == row.in_range
    if not ids:
        return Batch(ids, row.last, contiguous=contiguous, exhausted=exhausted)
    # Read after the row locks, so a concurrent run's ledger rows are visible. An
    # `= ANY` probe of the ledger's primary key: a NOT EXISTS join here degenerates into
    # a nested loop over the whole ledger whenever its statistics are stale, which they
    # always are during a run that is filling it.
    covered = anonymized.c.fields.contains(literal(bound.policy.fields, ARRAY(Text)))
    ledger = {
        r.entity_id: r.covered
        for r in await conn.execute(
            select(anonymized.c.entity_id, covered.label("covered")).where(
                anonymized.c.policy == bound.name,
                anonymized.c.entity_id
                == any_(bindparam("done", [str(i) for i in ids], type_=ARRAY(Text))),
            )
        )
    }
    ids = [i for i in ids if not ledger.get(str(i), False)]
    return Batch(
        ids,
        row.last,
        relabel=any(str(i) in ledger for i in ids),
        contiguous=contiguous,
        exhausted=exhausted,
    )
