"""One purge batch, in one transaction: lock, select, hook, act, outbox, ledger, audit.

Either all of it commits or none of it does: a crash can neither lose an event for a
purge that happened nor publish one for a purge that rolled back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Text,
    Uuid,
    any_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from coordinator.copies.crypto.keystore import KeyStore
from coordinator.copies.vault.seal import DOC, VaultRow, row_document, store_in_vault
from coordinator.evidence.audit import AuditAction, AuditEntry, append_prepared, prepare
from coordinator.outbox.write import EventBatch, enqueue, wake_column
from coordinator.policy import anonymizers
from coordinator.policy.binding import BoundPolicy
from coordinator.policy.model import Action, Policy
from coordinator.purge import marks
from coordinator.purge.archive import key_scope, owners, store_sealed
from coordinator.purge.holds import lock_for_purge
from coordinator.purge.planner import Batch, Window, batch_window, next_batch
from coordinator.store.tables import anonymized
from schemas import EventReason

__all__ = [
    "ActedBatch",
    "BatchResult",
    "EventOrigin",
    "PurgeBatch",
    "RunStatements",
    "act_batch",
    "acts_in_one_pass",
    "ensure_archive_table",
    "purge_batch",
    "record_batch",
]


@dataclass(frozen=True, slots=True)
class PurgeBatch:
    """What a `before_purge` hook receives, with the batch's connection, before the purge."""

    policy: Policy
    run_id: uuid.UUID
    ids: Sequence[Any]


@dataclass(frozen=True, slots=True)
class EventOrigin:
    """Why a batch acts, as its events say: a policy run (the default) or an erasure
    request, whose events carry its id, its legal basis and its due date."""

    reason: EventReason = EventReason.RETENTION_POLICY
    request_id: uuid.UUID | None = None
    legal_basis: str | None = None
    """None: the policy's."""
    deadline: datetime | None = None
    """None: the policy's completion deadline from now."""


RUN = EventOrigin()


@dataclass(frozen=True, slots=True)
class BatchResult:
    ids: Sequence[Any]
    events: int
    last_scanned: Any | None  # None: the policy has nothing left to scan
    contiguous: bool = False  # see planner.Batch
    exhausted: bool = False  # see planner.Batch: no next batch is needed


def _in_batch(bound: BoundPolicy, ids: Sequence[Any]) -> ColumnElement[bool]:
    # One array parameter instead of thousands of IN-list parameters.
    return bound.id_column == any_(bindparam("ids", list(ids), type_=ARRAY(bound.id_column.type)))


async def ensure_archive_table(conn: AsyncConnection, bound: BoundPolicy) -> None:
    if bound.archive is not None and not bound.archive_exists:
        await conn.run_sync(lambda sync: bound.archive.create(sync, checkfirst=True))  # type: ignore[union-attr]


def _vaults(bound: BoundPolicy, origin: EventOrigin) -> bool:
    """Whether the batch copies what it deletes into the vault: a `restore_window`
    policy's runs do; an erasure request's deletions are never to be restored."""
    return bound.policy.restore_window is not None and origin.reason is EventReason.RETENTION_POLICY


ENTITY = "retention_entity_text"
"""The label of the id as PostgreSQL's text that an archiving or vaulting DELETE returns
with each row: what the events name, cast as the other actions' ids are."""


def _entity_text(bound: BoundPolicy) -> ColumnElement[str]:
    return cast(bound.id_column, Text).label(ENTITY)


def _acted(
    bound: BoundPolicy, which: ColumnElement[bool], now: datetime, *, vaulted: bool = False
) -> tuple[Any, list[Any]]:
    """The action on the rows `which` selects as a data-modifying CTE returning the ids
    it touched (`vaulted`: and each whole row as JSON), plus its helpers."""
    table, action = bound.table, bound.policy.action
    returned: list[Any] = [bound.id_column]
    if bound.subject_column is not None and bound.subject_column is not bound.id_column:
        returned.append(bound.subject_column)
    if action is Action.DELETE:
        if vaulted:
            returned += [row_document(table), _entity_text(bound)]
        return delete(table).where(which).returning(*returned).cte("acted"), []
    if action is Action.ANONYMIZE:
        context = anonymizers.StrategyContext(id_column=bound.id_column, hash_key=bound.hash_key)
        values = {
            column: anonymizers.get(strategy).expression(table.c[column], context)
            for column, strategy in bound.policy.anonymize.items()
        }
        acted = update(table).where(which).values(values)
        # RETURNING gives the new values: a subject column that is anonymized too comes
        # back rewritten, so the subject is read from the row before the update.
        old = table.alias("before")
        if bound.subject_column is not None and bound.subject_column.name in values:
            subject = (
                select(old.c[bound.subject_column.name])
                .where(old.c[bound.id_column.name] == bound.id_column)
                .scalar_subquery()
                .label(bound.subject_column.name)
            )
            return acted.returning(bound.id_column, subject).cte("acted"), []
        return acted.returning(*returned).cte("acted"), []
    # Archive: the whole rows come back, to be sealed in Python (coordinator.purge.archive),
    # each followed by its id as text.
    return delete(table).where(which).returning(*table.c, _entity_text(bound)).cte("acted"), []


def _ledger(policy: Policy, entity: Any, run_id: uuid.UUID, now: datetime, *, relabel: bool) -> Any:
    ledger = pg_insert(anonymized).from_select(
        ["policy", "entity_id", "fields", "run_id", "anonymized_at"],
        select(
            literal(policy.name, Text),
            entity,
            literal(policy.fields, ARRAY(Text)),
            literal(run_id, Uuid),
            literal(now, DateTime(timezone=True)),
        ),
    )
    if not relabel:
        # The ids are locked and none has a ledger row, so none can conflict; if one
        # did, the unique violation rolls the batch back.
        return ledger
    # A row re-planned because the policy gained a field updates its ledger entry.
    return ledger.on_conflict_do_update(
        index_elements=[anonymized.c.policy, anonymized.c.entity_id],
        set_={
            "fields": ledger.excluded.fields,
            "run_id": ledger.excluded.run_id,
            "anonymized_at": ledger.excluded.anonymized_at,
        },
    )


def _subject(bound: BoundPolicy, acted: Any) -> ColumnElement[Any] | None:
    """`"type:id"` of each acted row's subject (NULL when the row names none); None when
    the policy maps no subjects."""
    if bound.subject is None or bound.subject_column is None:
        return None
    column = acted.c[bound.subject_column.name]
    return literal(f"{bound.subject.entity_type}:", Text).concat(cast(column, Text))


def _acted_entities(bound: BoundPolicy, acted: Any) -> Any:
    """The acted rows' entity ids as text, and their subjects, in id order: what the audit
    entry names, and the arrays the batch's outbox row holds (subjects: NULL for a policy
    that does not fan out)."""
    done = acted.c[bound.id_column.name]
    subject = _subject(bound, acted) if bound.policy.fan_out else None
    subjects: ColumnElement[Any] = literal(None, ARRAY(Text))
    if subject is not None:
        subjects = type_coerce(func.array_agg(aggregate_order_by(subject, done)), ARRAY(Text))
    # The ids sorted as themselves, then the sorted array cast to text (element by
    # element, the same text as casting each id): a one-column sort of the key's own
    # values, ~0.6–0.9 ms of PostgreSQL's CPU a 5,000-row batch cheaper than sorting (text,
    # id) pairs (measured, integer keys).
    entities = cast(func.array_agg(aggregate_order_by(done, done)), ARRAY(Text))
    return select(
        func.count().label("touched"),
        entities.label("entities"),
        subjects.label("subjects"),
    ).select_from(acted)


def _with_ledger(
    bound: BoundPolicy,
    which: ColumnElement[bool],
    run_id: uuid.UUID,
    now: datetime,
    *,
    relabel: bool = False,
    vaulted: bool = False,
) -> tuple[Any, list[Any]]:
    """Action, archive copy and ledger rows as CTEs of one statement.

    The ledger rows are generated server-side from the action's RETURNING, so they
    describe exactly the rows it touched; so does the outbox row, from the arrays the
    statement returns (`_acted_entities`).
    """
    policy = bound.policy
    acted, helpers = _acted(bound, which, now, vaulted=vaulted)
    entity = cast(acted.c[bound.id_column.name], Text)
    if policy.action is Action.ANONYMIZE:
        helpers.append(_ledger(policy, entity, run_id, now, relabel=relabel).cte("ledger"))
    return acted, helpers


def _owners(bound: BoundPolicy, rows: Sequence[Any]) -> list[tuple[str, Any]]:
    """Whose data key seals each archived or vaulted row: its subject's (type, id),
    else its entity's."""
    subject = (
        (bound.subject.entity_type, bound.subject_column.name)
        if bound.subject is not None and bound.subject_column is not None
        else None
    )
    return owners(
        rows, entity_type=bound.policy.entity_type, id_column=bound.id_column.name, subject=subject
    )


@dataclass(frozen=True, slots=True)
class _Acted:
    """What one batch's action touched: the ids, and their text and subjects for events."""

    ids: Sequence[Any]
    entities: Sequence[str]
    subjects: Sequence[str | None] | None


def _archived_entities(
    bound: BoundPolicy, rows: Sequence[Any]
) -> tuple[list[str], list[str | None] | None]:
    """Entity ids (as the DELETE cast them to text) and subjects of archived or vaulted
    rows, in the rows' order."""
    if not rows:
        return [], None
    at = rows[0]._fields.index(ENTITY)
    entities = [row[at] for row in rows]
    if bound.subject is None or bound.subject_column is None:
        return entities, None
    name, kind = bound.subject_column.name, bound.subject.entity_type
    subjects = [
        None if row._mapping[name] is None else f"{kind}:{row._mapping[name]}" for row in rows
    ]
    return entities, subjects


def _scopes(bound: BoundPolicy, rows: Sequence[Any]) -> list[str]:
    return [key_scope(bound.policy.name, t, i) for t, i in _owners(bound, rows)]


def _vault_rows(bound: BoundPolicy, rows: Sequence[Any]) -> list[VaultRow]:
    id_name = bound.id_column.name
    subject_type = bound.subject.entity_type if bound.subject is not None else None
    subject_name = bound.subject_column.name if bound.subject_column is not None else None

    def subject(row: Any) -> str | None:
        if subject_type is None or subject_name is None:
            return None
        value = row._mapping[subject_name]
        return None if value is None else f"{subject_type}:{value}"

    return [
        VaultRow(
            entity_id=str(row._mapping[id_name]),
            subject=subject(row),
            scope=key_scope(bound.policy.name, *owner),
            document=row._mapping[DOC],
        )
        for row, owner in zip(rows, _owners(bound, rows), strict=True)
    ]


async def _act(
    conn: AsyncConnection,
    bound: BoundPolicy,
    batch: Batch,
    run_id: uuid.UUID,
    now: datetime,
    keys: KeyStore | None,
    origin: EventOrigin,
) -> _Acted:
    """Act on ids selected and locked before: one statement, one round trip (archive:
    plus the sealed rows' insert and one key-store round trip)."""
    ids = batch.ids
    acted, helpers = _with_ledger(
        bound,
        _in_batch(bound, ids),
        run_id,
        now,
        relabel=batch.relabel,
        vaulted=_vaults(bound, origin),
    )
    entities: list[str] = []
    subjects: list[str | None] | None = None
    if bound.policy.action is Action.ARCHIVE:
        if keys is None or bound.archive is None:
            raise RuntimeError("an archive batch needs the key store")
        rows = (await conn.execute(select(acted).add_cte(*helpers))).all()
        await store_sealed(
            conn,
            bound.archive,
            rows,
            id_column=bound.id_column.name,
            clear=bound.archive_clear,
            scopes=_scopes(bound, rows),
            keys=keys,
            now=now,
            columns=[c.name for c in bound.table.c],
        )
        touched = len(rows)
        if bound.policy.fan_out:
            entities, subjects = _archived_entities(bound, rows)
    elif _vaults(bound, origin):
        window = bound.policy.restore_window
        if keys is None or window is None:
            raise RuntimeError("a restore_window batch needs the key store")
        rows = (await conn.execute(select(acted).add_cte(*helpers))).all()
        await store_in_vault(
            conn,
            _vault_rows(bound, rows),
            policy=bound.policy.name,
            table=bound.table.name,
            id_column=bound.id_column.name,
            entity_type=bound.policy.entity_type,
            run_id=run_id,
            keys=keys,
            now=now,
            expires_at=now + window,
        )
        touched = len(rows)
        if bound.policy.fan_out:
            entities, subjects = _archived_entities(bound, rows)
    else:
        row = (await conn.execute(_acted_entities(bound, acted).add_cte(*helpers))).one()
        touched, entities, subjects = row.touched, list(row.entities or ()), row.subjects
    if touched != len(ids):
        # The ids are locked by this transaction, so anything else is a bug: roll back.
        raise RuntimeError(f"{bound.policy.action} touched {touched} rows, expected {len(ids)}")
    return _Acted(ids, entities, subjects)


@dataclass
class RunStatements:
    """The one-pass batch statement of a policy's run, built once and reused.

    Building it and its cache key costs SQLAlchemy ~0.9 ms of Python (measured), paid
    again by every batch although only the keyset's `after` changes between them; that
    is bound when the statement runs. Everything else it embeds (the policy, its cutoff
    and `now`) is the run's, checked on every use: a different run or policy builds anew.
    """

    _built: dict[tuple[Any, ...], tuple[Any, Window]] = field(default_factory=dict)

    def get(
        self, bound: BoundPolicy, *, cutoff: datetime, now: datetime, starts: bool
    ) -> tuple[Any, Window] | None:
        return self._built.get((id(bound), cutoff, now, starts))

    def put(
        self,
        bound: BoundPolicy,
        built: tuple[Any, Window],
        *,
        cutoff: datetime,
        now: datetime,
        starts: bool,
    ) -> None:
        # Keyed on the bound policy's identity: the memo lives for one run, whose
        # binding does not change.
        self._built[(id(bound), cutoff, now, starts)] = built


def _select_and_act_statement(
    bound: BoundPolicy,
    *,
    run_id: uuid.UUID,
    cutoff: datetime,
    now: datetime,
    after: Any | None,
    scope: ColumnElement[bool] | None,
) -> tuple[Any, Window]:
    window = batch_window(
        bound, cutoff=cutoff, now=now, after=after, limit=bound.policy.batch_size, scope=scope
    )
    acted, helpers = _with_ledger(bound, window.chosen, run_id, now)
    entities = _acted_entities(bound, acted).subquery("entities")
    columns = [
        window.last.label("last"),
        window.seen.label("seen"),
        entities.c.entities,
        entities.c.subjects,
    ]
    if bound.policy.fan_out:
        # The relays' wake-up in this round trip (queued until the commit), only when
        # the batch touched rows and so writes events: `enqueue` then skips its own.
        # Correlated: a subquery of its own would aggregate the acted rows a second time.
        woken = wake_column(when=entities.c.touched > 0).correlate(entities)
        columns.append(woken.label("woken"))
    return select(*columns).select_from(entities).add_cte(acted, *helpers), window


async def _select_and_act(
    conn: AsyncConnection,
    bound: BoundPolicy,
    *,
    run_id: uuid.UUID,
    cutoff: datetime,
    now: datetime,
    after: Any | None,
    scope: ColumnElement[bool] | None,
    statements: RunStatements | None,
) -> tuple[Batch, _Acted]:
    """Choose and act in one statement: the action's own row locks replace FOR UPDATE.

    For a delete or archive with no hook nothing has to happen between choosing the rows
    and acting on them, so the DELETE takes the window's predicate itself: one pass over
    the rows instead of a locking select, an id array round trip and index probes.
    PostgreSQL re-checks the predicate on rows changed concurrently, as FOR UPDATE does.
    """
    starts = after is not None
    # An erasure request's scope is an expression of its own: built each time.
    memo = statements if scope is None else None
    built = memo.get(bound, cutoff=cutoff, now=now, starts=starts) if memo else None
    if built is None:
        built = _select_and_act_statement(
            bound, run_id=run_id, cutoff=cutoff, now=now, after=after, scope=scope
        )
        if memo is not None:
            memo.put(bound, built, cutoff=cutoff, now=now, starts=starts)
    statement, window = built
    params = {"after": after} if starts else {}
    row = (await conn.execute(statement, params)).one()
    if row.last is None:
        return Batch((), None, exhausted=True), _Acted((), (), None)
    # The ids as text (what the audit entry and the events name) are all the caller needs.
    touched = list(row.entities or ())
    return (
        Batch(touched, row.last, exhausted=window.exhausted(row.seen)),
        _Acted(touched, touched, row.subjects),
    )


def acts_in_one_pass(bound: BoundPolicy, origin: EventOrigin = RUN) -> bool:
    """Whether a batch of `bound` chooses and acts in one statement (`_select_and_act`)."""
    # A hook must see the ids before the purge; anonymize reads its ledger after the
    # row locks (coordinator.purge.planner.next_batch); archive and vault seal rows in
    # Python.
    return (
        bound.hook is None and bound.policy.action is Action.DELETE and not _vaults(bound, origin)
    )


@dataclass(frozen=True, slots=True)
class ActedBatch:
    """A batch acted on and not yet recorded (`act_batch`): its transaction is open."""

    batch: Batch
    acted: _Acted
    one_pass: bool

    @property
    def last_scanned(self) -> Any | None:
        return self.batch.last_scanned

    @property
    def exhausted(self) -> bool:
        return self.batch.exhausted


async def purge_batch(
    conn: AsyncConnection,
    bound: BoundPolicy,
    *,
    run_id: uuid.UUID,
    cutoff: datetime,
    now: datetime,
    after: Any | None,
    scope: ColumnElement[bool] | None = None,
    origin: EventOrigin = RUN,
    keys: KeyStore | None = None,
    mark: bool = False,
    statements: RunStatements | None = None,
) -> BatchResult:
    """Purge the next batch after `after` inside the caller's transaction.

    `keys` is the key store an archive policy seals its rows with.
    `scope` and `origin` make it an erasure request's batch: the subject's rows instead
    of the due ones, and events that say so (coordinator.erasure.execute).
    `mark`: every batch of the run so far was contiguous (an anonymize policy), so the
    policy's mark moves past this one if it is too (coordinator/purge/marks.py).
    `statements`: the run's memo of its batch statement (`RunStatements`), for a caller
    that purges the same policy batch after batch.

    Round trips per batch: the hold lock, then either one statement that chooses the rows
    and acts on them (delete without a hook; it also sends a fanning-out batch's wake-up
    of the relays, which the other paths send from `enqueue`), or one select-and-lock
    statement (two for anonymize: the ledger is read after the row locks), the optional
    hook and one statement for action + ledger, returning the touched ids as text and
    their subjects (archive: then the key store, once for the batch, and the sealed rows'
    insert); the anonymize mark; last, under the audit chain's lock, the batch's one
    outbox row and its audit entry in one statement (coordinator/outbox/write.py: three
    round trips with the lock, then the commit).
    """
    acted = await act_batch(
        conn,
        bound,
        run_id=run_id,
        cutoff=cutoff,
        now=now,
        after=after,
        scope=scope,
        origin=origin,
        keys=keys,
        mark=mark,
        statements=statements,
    )
    return await record_batch(conn, bound, acted, run_id=run_id, now=now, origin=origin)


async def act_batch(
    conn: AsyncConnection,
    bound: BoundPolicy,
    *,
    run_id: uuid.UUID,
    cutoff: datetime,
    now: datetime,
    after: Any | None,
    scope: ColumnElement[bool] | None = None,
    origin: EventOrigin = RUN,
    keys: KeyStore | None = None,
    mark: bool = False,
    statements: RunStatements | None = None,
) -> ActedBatch:
    """The first half of `purge_batch`: the hold lock, choosing and acting (and the
    anonymize mark), in the caller's transaction. `record_batch` completes it."""
    policy = bound.policy
    await lock_for_purge(conn)  # before the select: see coordinator.purge.holds
    acted = _Acted((), (), None)
    one_pass = acts_in_one_pass(bound, origin)
    if one_pass:
        batch, acted = await _select_and_act(
            conn,
            bound,
            run_id=run_id,
            cutoff=cutoff,
            now=now,
            after=after,
            scope=scope,
            statements=statements,
        )
    else:
        batch = await next_batch(
            conn,
            bound,
            cutoff=cutoff,
            now=now,
            after=after,
            limit=policy.batch_size,
            scope=scope,
        )
        if batch.ids:
            if bound.hook is not None:
                await bound.hook(conn, PurgeBatch(policy, run_id, batch.ids))
            acted = await _act(conn, bound, batch, run_id, now, keys, origin)
    if mark and batch.contiguous:
        await marks.advance(conn, bound, batch.last_scanned, cutoff=cutoff, now=now)
    return ActedBatch(batch, acted, one_pass)


async def record_batch(
    conn: AsyncConnection,
    bound: BoundPolicy,
    done: ActedBatch,
    *,
    run_id: uuid.UUID,
    now: datetime,
    origin: EventOrigin = RUN,
) -> BatchResult:
    """The second half of `purge_batch`, in the transaction `act_batch` ran in: the
    batch's outbox row and audit entry, under the audit chain's lock (held to the
    commit)."""
    policy = bound.policy
    batch, acted, one_pass = done.batch, done.acted, done.one_pass
    ids = batch.ids
    if not ids:
        return BatchResult(ids, 0, batch.last_scanned, batch.contiguous, batch.exhausted)
    # Archive without fan-out has not kept the ids' text.
    entity_ids = list(acted.entities) if acted.entities else [str(i) for i in ids]
    events = len(entity_ids) if policy.fan_out else 0
    # Last, so that the audit chain's lock (taken here, held to the commit) waits for
    # nothing but these inserts.
    # Only JSON's own types (the ids as text), so the entry is stored as it is built
    # (audit.prepare's json_native): no JSON round trip of a batch's ids.
    recorded = AuditEntry(
        AuditAction.PURGE_BATCH,
        "coordinator",
        {
            "run_id": str(run_id),
            "policy": policy.name,
            "action": policy.action.value,
            "entity_type": policy.entity_type,
            "count": len(entity_ids),
            "events": events,
            "ids": entity_ids,
            **({"request_id": str(origin.request_id)} if origin.request_id is not None else {}),
        },
    )
    if policy.fan_out:
        await enqueue(
            conn,
            EventBatch(
                policy=policy.name,
                event_type=policy.event_type,
                entity_type=policy.entity_type,
                legal_basis=origin.legal_basis or policy.legal_basis,
                initiated_at=now,
                deadline=origin.deadline or now + policy.completion_deadline,
                entity_ids=acted.entities,
                subjects=acted.subjects,
                fields=policy.fields,
                run_id=run_id,
                reason=origin.reason,
                request_id=origin.request_id,
            ),
            recorded=recorded,
            json_native=True,
            woken=one_pass,
        )
    else:
        await append_prepared(conn, prepare([recorded], at=now, json_native=True))
    return BatchResult(ids, events, batch.last_scanned, batch.contiguous, batch.exhausted)
