"""Carry out an erasure request with the purge engine of a policy run.

Per table that holds the subject's rows, one policy acts (SPEC §11: exempt wins, then
delete, then archive, then anonymize); the others are recorded as superseded. The
winner's rows of the subject, whatever their age and whatever the policy's `conditions`,
go through `coordinator.purge.batch.purge_batch` in keyset batches: the same hold lock,
the same hold predicate in SQL (entity and subject holds), the same action statements,
ledger, outbox rows and audit entry, each batch one transaction. Exempt policies leave
their rows and report how many, with the exemption basis.

Then one subject event goes into the outbox, unless the subject itself is held: a held
subject must not be erased anywhere, and the SDK's own hold check is not there yet.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    Integer,
    SmallInteger,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from coordinator.clock import Clock
from coordinator.copies.crypto.keystore import KeyStore, KeyStoreError, open_keystore
from coordinator.copies.suppression.entries import Suppression, record_erased
from coordinator.erasure.due import LEGAL_BASIS
from coordinator.erasure.requests import (
    CLOSED,
    ErasureError,
    ErasureRequest,
    Status,
    get_request,
)
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.outbox.write import EventBatch, enqueue
from coordinator.policy.binding import BoundPolicy, bind_policies
from coordinator.policy.model import Action, OnErasure, PolicySet
from coordinator.purge.archive import KEY_ID, key_scope
from coordinator.purge.batch import EventOrigin, ensure_archive_table, purge_batch
from coordinator.purge.holds import active_hold_exists, event_held, lock_for_purge
from coordinator.purge.planner import held_clause, time_base
from coordinator.settings import Settings
from coordinator.store.db import unbounded_lock_waits
from coordinator.store.tables import (
    erasure_parts,
    erasure_requests,
    legal_hold_entities,
    legal_holds,
    outbox_batches,
    runs,
    vault,
)
from schemas import EventReason
from schemas.suppression import PepperError

__all__ = ["SUBJECT_EVENT_POLICY", "Execution", "execute_request", "precedence", "typed_id"]

log = structlog.get_logger(__name__)

SUBJECT_EVENT_POLICY = "erasure_request"
"""The `policy` of a request's subject event (SPEC §11)."""

_ORDER = {"exempt": 0, Action.DELETE.value: 1, Action.ARCHIVE.value: 2, Action.ANONYMIZE.value: 3}


def precedence(bound: BoundPolicy) -> tuple[int, str]:
    """Sort key of the policies mapping one table: the first one acts (SPEC §11)."""
    policy = bound.policy
    kind = "exempt" if policy.on_erasure_request is OnErasure.EXEMPT else policy.action.value
    return _ORDER[kind], policy.name


@dataclass
class Part:
    policy: str
    table: str
    action: str
    outcome: str = "pending"
    rows: int = 0
    held: int = 0
    events: int = 0
    archived_copies_deleted: int = 0
    archived_copies_shredded: int = 0
    shredded_key_id: uuid.UUID | None = None
    legal_basis: str = ""
    exemption_basis: str | None = None
    detail: str = ""
    holds: list[str] = field(default_factory=list)


@dataclass
class Execution:
    request: ErasureRequest
    run_id: uuid.UUID
    parts: list[Part]
    subject_event: bool
    holds: list[str]
    errors: list[str]

    @property
    def status(self) -> Status:
        return Status.ON_HOLD if self.holds else Status.IN_PROGRESS


def typed_id(column: Any, subject_id: str) -> Any | None:
    """The subject id as the column's type, or None when it cannot be one (no rows)."""
    if isinstance(column.type, (Integer, BigInteger, SmallInteger)):
        try:
            return int(subject_id)
        except ValueError:
            return None
    if isinstance(column.type, Uuid):
        try:
            return uuid.UUID(subject_id)
        except ValueError:
            return None
    return subject_id


def _of_subject(column: Any, subject_id: str) -> ColumnElement[bool] | None:
    value = typed_id(column, subject_id)
    if value is None:
        return None
    return column == bindparam(None, value, type_=column.type)  # type: ignore[no-any-return]


async def _hold_names(
    conn: AsyncConnection,
    bound: BoundPolicy,
    scope: ColumnElement[bool],
    subject: tuple[str, str],
    now: datetime,
) -> list[str]:
    """The active holds that keep some of these rows: on the subject or on a row."""
    active = and_(
        legal_holds.c.released_at.is_(None),
        or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > now),
    )
    rows = select(cast(bound.id_column, Text)).where(scope)
    query = (
        select(legal_holds.c.id)
        .distinct()
        .select_from(
            legal_hold_entities.join(legal_holds, legal_holds.c.id == legal_hold_entities.c.hold_id)
        )
        .where(
            active,
            or_(
                and_(
                    legal_hold_entities.c.entity_type == subject[0],
                    legal_hold_entities.c.entity_id == subject[1],
                ),
                and_(
                    legal_hold_entities.c.entity_type == bound.policy.entity_type,
                    legal_hold_entities.c.entity_id.in_(rows),
                ),
            ),
        )
        .order_by(legal_holds.c.id)
    )
    return list((await conn.execute(query)).scalars())


async def _count(conn: AsyncConnection, bound: BoundPolicy, where: ColumnElement[bool]) -> int:
    return int(
        (
            await conn.execute(select(func.count()).select_from(bound.table).where(where))
        ).scalar_one()
    )


@dataclass(frozen=True, slots=True)
class Shredding:
    rows: int
    held: int
    key_id: uuid.UUID | None
    destroyed: bool


async def _shred_archived_copies(
    engine: AsyncEngine,
    keys: KeyStore,
    bound: BoundPolicy,
    request: ErasureRequest,
    now: datetime,
) -> Shredding:
    """Crypto-shred the subject's archived copies: destroy the subject's data key.

    The key seals every archived row of the subject, so while any of them is held the
    key stays and nothing is shredded. The destruction is audited once the key store
    confirms it; a crash in between leaves the key gone, and a repeat of the request
    finds the key id on the archived rows and records it then.
    """
    archive, subject = bound.archive, bound.subject
    assert subject is not None
    if archive is None or not bound.archive_exists:
        return Shredding(0, 0, None, destroyed=False)
    column = archive.c[subject.column]
    value = typed_id(column, request.subject_id)
    if value is None:
        return Shredding(0, 0, None, destroyed=False)
    held = or_(
        active_hold_exists(bound.policy.entity_type, archive.c[bound.id_column.name], now),
        active_hold_exists(subject.entity_type, column, now),
    )
    async with engine.connect() as conn:
        counts = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(held),
                    func.array_agg(func.distinct(archive.c[KEY_ID])),
                ).where(column == value)
            )
        ).one()
    rows, held_rows, key_ids = int(counts[0]), int(counts[1]), list(counts[2] or ())
    if held_rows:
        return Shredding(rows, held_rows, key_ids[0] if key_ids else None, destroyed=False)
    scope = key_scope(bound.name, subject.entity_type, value)
    key_id = await _destroy_key(
        engine, keys, scope, key_ids[0] if key_ids else None, request, bound, rows, now
    )
    return Shredding(rows, 0, key_id, destroyed=key_id is not None)


async def _destroy_key(
    engine: AsyncEngine,
    keys: KeyStore,
    scope: str,
    known: uuid.UUID | None,
    request: ErasureRequest,
    bound: BoundPolicy,
    rows: int,
    now: datetime,
) -> uuid.UUID | None:
    """Destroy the scope's data key and audit it; the key's id (`known` when an earlier
    execution destroyed it already), or None when the scope never had one.

    The audit never trails the destruction. When the key store is the data's database,
    the deletion and its `data_key.destroyed` entry are one transaction. A separate key
    store cannot share a transaction with the audit log, so the intent
    (`data_key.destroying`) commits first, then the deletion, then `data_key.destroyed`:
    a crash in between leaves the key usable or gone, never in between, and an intent
    without its outcome that a repeat of the request completes (docs/operations.md).
    """

    def entry(action: AuditAction, key_id: uuid.UUID, gone: bool) -> AuditEntry:
        return AuditEntry(
            action,
            "coordinator",
            {
                "key_id": key_id,
                "scope": scope,
                "request_id": request.id,
                "policy": bound.name,
                "archived_rows": rows,
                "already_gone": gone,
            },
        )

    if not keys.separate:
        async with engine.begin() as conn:
            destroyed = await keys.destroy(scope, conn=conn)
            key_id = destroyed or known
            if key_id is not None:
                await append(
                    conn, [entry(AuditAction.DATA_KEY_DESTROYED, key_id, destroyed is None)], at=now
                )
        return key_id
    present = await keys.key_id_of(scope)
    if present is not None:
        async with engine.begin() as conn:
            await append(conn, [entry(AuditAction.DATA_KEY_DESTROYING, present, False)], at=now)
    destroyed = await keys.destroy(scope)
    key_id = destroyed or known or present
    if key_id is not None:
        async with engine.begin() as conn:
            await append(
                conn, [entry(AuditAction.DATA_KEY_DESTROYED, key_id, destroyed is None)], at=now
            )
    return key_id


async def _shred_vault_copies(
    engine: AsyncEngine,
    keys: KeyStore,
    bound: BoundPolicy,
    request: ErasureRequest,
    now: datetime,
) -> Shredding:
    """Crypto-shred the subject's copies in the restoration vault (SPEC §12): the same
    rule as for archived copies, a held copy keeps the key."""
    subject = bound.subject
    assert subject is not None
    value = typed_id(bound.subject_column, request.subject_id)
    if value is None:
        return Shredding(0, 0, None, destroyed=False)
    scope = key_scope(bound.name, subject.entity_type, value)
    held = event_held(vault.c.entity_type, vault.c.entity_id, vault.c.subject, now)
    async with engine.connect() as conn:
        counts = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(held),
                    func.array_agg(func.distinct(vault.c.key_id)),
                ).where(vault.c.scope == scope)
            )
        ).one()
    rows, held_rows, key_ids = int(counts[0]), int(counts[1]), list(counts[2] or ())
    if held_rows:
        return Shredding(rows, held_rows, key_ids[0] if key_ids else None, destroyed=False)
    key_id = await _destroy_key(
        engine, keys, scope, key_ids[0] if key_ids else None, request, bound, rows, now
    )
    return Shredding(rows, 0, key_id, destroyed=key_id is not None)


async def _act_on(
    engine: AsyncEngine,
    bound: BoundPolicy,
    request: ErasureRequest,
    run_id: uuid.UUID,
    now: datetime,
    part: Part,
    keys: KeyStore | None,
) -> None:
    subject = bound.subject
    assert subject is not None
    assert bound.subject_column is not None
    scope = _of_subject(bound.subject_column, request.subject_id)
    if scope is None:
        part.outcome, part.detail = "done", "the subject id cannot be a value of this column"
        return
    if bound.policy.on_erasure_request is OnErasure.EXEMPT:
        async with engine.connect() as conn:
            part.rows = await _count(conn, bound, scope)
        part.outcome = "exempt"
        part.exemption_basis = bound.policy.exemption_basis
        return
    origin = EventOrigin(
        reason=EventReason.ERASURE_REQUEST,
        request_id=request.id,
        legal_basis=LEGAL_BASIS[request.regulation],
        deadline=request.due_at,
    )
    if bound.archive is not None and not bound.archive_exists:
        async with engine.begin() as conn:
            await ensure_archive_table(conn, bound)
    archive_held = 0
    # A run of the same policy would race for the same rows: wait for it, don't skip.
    key = func.hashtext(f"retention.policy:{bound.name}")
    async with engine.connect() as lock:
        await lock.execution_options(isolation_level="AUTOCOMMIT")
        # However long: a bounded one-shot command (`requests create`) would otherwise
        # record the part as failed for a run that is merely long; the bound comes back
        # for the statements after it.
        async with unbounded_lock_waits(lock):
            await lock.execute(select(func.pg_advisory_lock(key)))
        try:
            after: Any | None = None
            while True:
                async with engine.begin() as conn:
                    batch = await purge_batch(
                        conn,
                        bound,
                        run_id=run_id,
                        cutoff=now,
                        now=now,
                        after=after,
                        scope=scope,
                        origin=origin,
                        keys=keys,
                    )
                if batch.last_scanned is None:
                    break
                after = batch.last_scanned
                part.rows += len(batch.ids)
                part.events += batch.events
            if bound.policy.action is Action.ARCHIVE:
                assert keys is not None
                shredded = await _shred_archived_copies(engine, keys, bound, request, now)
                part.shredded_key_id = shredded.key_id
                if shredded.destroyed:
                    part.archived_copies_shredded = shredded.rows
                    part.detail = (
                        f"archive policy: the rows were archived, and all {shredded.rows} "
                        f"archived copies of the subject are crypto-shredded (data key "
                        f"{shredded.key_id} destroyed)"
                    )
                elif shredded.held:
                    archive_held = shredded.held
                    part.detail = (
                        f"archive policy: {shredded.held} archived copies of the subject are "
                        "held, so the subject's data key is kept"
                    )
                else:
                    part.detail = "archive policy: no archived copies of the subject"
            elif bound.policy.restore_window is not None:
                assert keys is not None
                shredded = await _shred_vault_copies(engine, keys, bound, request, now)
                part.shredded_key_id = shredded.key_id
                if shredded.held:
                    archive_held = shredded.held
                    part.detail = (
                        f"restore_window policy: {shredded.held} copies of the subject in the "
                        "restoration vault are held, so the subject's data key is kept"
                    )
                elif shredded.destroyed:
                    part.archived_copies_shredded = shredded.rows
                    part.detail = (
                        f"restore_window policy: all {shredded.rows} copies of the subject in "
                        f"the restoration vault are crypto-shredded (data key {shredded.key_id} "
                        "destroyed); this request's own deletions were never vaulted"
                    )
                else:
                    part.detail = (
                        "restore_window policy: this request's deletions are not vaulted, and "
                        "no earlier copies of the subject were"
                    )
        finally:
            await lock.execute(select(func.pg_advisory_unlock(key)))
    async with engine.connect() as conn:
        held = and_(scope, held_clause(bound, now))
        part.held = await _count(conn, bound, held) + archive_held
        if part.held:
            part.holds = await _hold_names(
                conn, bound, held, (subject.entity_type, request.subject_id), now
            )
    part.outcome = "done"


async def _subject_held(conn: AsyncConnection, request: ErasureRequest, now: datetime) -> list[str]:
    rows = await conn.execute(
        select(legal_holds.c.id)
        .select_from(
            legal_hold_entities.join(legal_holds, legal_holds.c.id == legal_hold_entities.c.hold_id)
        )
        .where(
            legal_hold_entities.c.entity_type == request.subject_type,
            legal_hold_entities.c.entity_id == request.subject_id,
            legal_holds.c.released_at.is_(None),
            or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > now),
        )
        .order_by(legal_holds.c.id)
    )
    return list(rows.scalars())


async def _publish_subject_event(
    engine: AsyncEngine,
    request: ErasureRequest,
    run_id: uuid.UUID,
    now: datetime,
    suppression: Suppression | None,
) -> tuple[bool, list[str]]:
    """One subject event per request, once; none while the subject is held. With it, in the
    same transaction, the subject goes on the suppression list (SPEC §12)."""
    async with engine.begin() as conn:
        # The request's row lock makes "not published yet, publish" one step.
        await conn.execute(
            select(erasure_requests.c.id)
            .where(erasure_requests.c.id == request.id)
            .with_for_update()
        )
        await lock_for_purge(conn)  # a hold created meanwhile waits, or is seen here
        held = await _subject_held(conn, request, now)
        if held:
            return False, held
        exists_already = (
            await conn.execute(
                select(func.count()).where(
                    outbox_batches.c.request_id == request.id,
                    outbox_batches.c.policy == SUBJECT_EVENT_POLICY,
                )
            )
        ).scalar_one()
        if exists_already:
            return True, []
        await enqueue(
            conn,
            EventBatch(
                policy=SUBJECT_EVENT_POLICY,
                event_type="delete",
                entity_type=request.subject_type,
                legal_basis=LEGAL_BASIS[request.regulation],
                initiated_at=now,
                deadline=request.due_at,
                entity_ids=[request.subject_id],
                subjects=[request.subject],
                run_id=run_id,
                reason=EventReason.ERASURE_REQUEST,
                request_id=request.id,
            ),
        )
        if suppression is not None:
            await record_erased(
                conn, suppression, request.subject_type, request.subject_id, now=now
            )
        return True, []


def _mapped(
    bound: dict[str, BoundPolicy], policy_set: PolicySet, subject_type: str
) -> dict[str, list[BoundPolicy]]:
    """Table → the bound policies mapping it to this subject type, winner first."""
    tables: dict[str, list[BoundPolicy]] = {}
    for policy, _ in policy_set.subject_map().get(subject_type, []):
        if policy.name in bound:
            tables.setdefault(policy.table, []).append(bound[policy.name])
    return {table: sorted(found, key=precedence) for table, found in tables.items()}


async def execute_request(
    engine: AsyncEngine,
    policy_set: PolicySet,
    settings: Settings,
    request_id: uuid.UUID,
    *,
    clock: Clock,
    by: str,
) -> Execution | None:
    """Act on every mapped table for the request's subject; record parts and status.

    Safe to repeat (after a crash, after a hold is released): rows already erased are
    no longer found, anonymized ones are skipped by the ledger, the subject event is
    published once, and each part adds what this execution did to what earlier ones did.
    One execution of a request at a time (a session advisory lock); None when another
    process is executing it now.
    """
    try:
        # Before anything changes: an erasure whose subject can't be listed as erased would
        # go unlisted for good.
        suppression = Suppression.from_settings(settings)
    except PepperError as exc:
        raise ErasureError(str(exc)) from None
    key = func.hashtext(f"retention.erasure:{request_id}")
    async with engine.connect() as lock:
        await lock.execution_options(isolation_level="AUTOCOMMIT")
        if not (await lock.execute(select(func.pg_try_advisory_lock(key)))).scalar():
            return None
        try:
            return await _execute(
                engine, policy_set, settings, request_id, suppression, clock=clock, by=by
            )
        finally:
            await lock.execute(select(func.pg_advisory_unlock(key)))


async def _execute(
    engine: AsyncEngine,
    policy_set: PolicySet,
    settings: Settings,
    request_id: uuid.UUID,
    suppression: Suppression | None,
    *,
    clock: Clock,
    by: str,
) -> Execution:
    async with engine.connect() as conn:
        request = await get_request(conn, request_id)
        base = await time_base(conn, clock)
        bound, issues = await bind_policies(conn, policy_set, settings)
    if request.status.value in CLOSED:
        return Execution(request, request.run_id or uuid.uuid4(), [], False, [], [])
    now = base.now
    run_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(runs).values(id=run_id, started_at=now, trigger="erasure_request", forced=False)
        )
        await conn.execute(
            update(erasure_requests)
            .where(erasure_requests.c.id == request.id)
            .values(run_id=run_id)
        )
    parts: list[Part] = []
    errors: list[str] = []
    for policy, _ in policy_set.subject_map().get(request.subject_type, []):
        found = [str(issue) for issue in issues.get(policy.name, [])]
        if found:
            # A mapped table that cannot be bound is never skipped silently: the request
            # stays open and says why.
            errors += found
            parts.append(
                Part(
                    policy=policy.name,
                    table=policy.table,
                    action=policy.action.value,
                    outcome="error",
                    legal_basis=policy.legal_basis,
                    detail="; ".join(found),
                )
            )
    keys: KeyStore | None = None
    try:
        for table, candidates in _mapped(bound, policy_set, request.subject_type).items():
            winner, *others = candidates
            part = Part(
                policy=winner.name,
                table=table,
                action=winner.policy.action.value,
                legal_basis=winner.policy.legal_basis,
            )
            try:
                needs_keys = (
                    winner.policy.action is Action.ARCHIVE
                    or winner.policy.restore_window is not None
                )
                if needs_keys and keys is None:
                    keys = open_keystore(settings, engine)
                await _act_on(engine, winner, request, run_id, now, part, keys)
            except KeyStoreError as exc:
                part.outcome, part.detail = "error", str(exc)
                errors.append(f"{winner.name}: {exc}")
            except Exception as exc:  # recorded, and the request stays open for a retry
                part.outcome, part.detail = "error", type(exc).__name__
                errors.append(f"{winner.name}: {type(exc).__name__}")
                log.error("erasure_part_failed", request_id=str(request.id), policy=winner.name)
            parts.append(part)
            parts.extend(
                Part(
                    policy=other.name,
                    table=table,
                    action=other.policy.action.value,
                    outcome="superseded",
                    legal_basis=other.policy.legal_basis,
                    detail=f"table {table!r} is handled by policy {winner.name!r}",
                )
                for other in others
            )
    finally:
        if keys is not None:
            await keys.aclose()
    published, subject_holds = await _publish_subject_event(
        engine, request, run_id, now, suppression
    )
    holds = sorted({*subject_holds, *(h for p in parts for h in p.holds)})
    execution = Execution(request, run_id, parts, published, holds, errors)
    await _record(engine, execution, now, by)
    async with engine.connect() as conn:
        execution.request = await get_request(conn, request.id)
    return execution


async def _record(engine: AsyncEngine, execution: Execution, now: datetime, by: str) -> None:
    request, parts = execution.request, execution.parts
    status = execution.status
    async with engine.begin() as conn:
        if parts:
            add = pg_insert(erasure_parts)
            new = add.excluded
            await conn.execute(
                # A later execution (after a hold's release, after a crash) adds what it
                # did; exempt rows (still there), held rows and the outcome are the latest.
                add.on_conflict_do_update(
                    index_elements=[erasure_parts.c.request_id, erasure_parts.c.policy],
                    set_={
                        "rows": case(
                            (new.outcome == "exempt", new.rows),
                            else_=erasure_parts.c.rows + new.rows,
                        ),
                        "events": erasure_parts.c.events + new.events,
                        "archived_copies_deleted": erasure_parts.c.archived_copies_deleted
                        + new.archived_copies_deleted,
                        "archived_copies_shredded": func.greatest(
                            erasure_parts.c.archived_copies_shredded, new.archived_copies_shredded
                        ),
                        "shredded_key_id": func.coalesce(
                            new.shredded_key_id, erasure_parts.c.shredded_key_id
                        ),
                        "held": new.held,
                        "outcome": new.outcome,
                        "detail": new.detail,
                        "done_at": new.done_at,
                    },
                ),
                [
                    {
                        "request_id": request.id,
                        "policy": p.policy,
                        "table_name": p.table,
                        "action": p.action,
                        "outcome": p.outcome,
                        "rows": p.rows,
                        "held": p.held,
                        "events": p.events,
                        "archived_copies_deleted": p.archived_copies_deleted,
                        "archived_copies_shredded": p.archived_copies_shredded,
                        "shredded_key_id": p.shredded_key_id,
                        "legal_basis": p.legal_basis,
                        "exemption_basis": p.exemption_basis,
                        "detail": p.detail,
                        "done_at": now if p.outcome != "pending" else None,
                    }
                    for p in parts
                ],
            )
        done = not execution.errors
        await conn.execute(
            update(erasure_requests)
            .where(erasure_requests.c.id == request.id, erasure_requests.c.status.not_in(CLOSED))
            .values(
                status=status.value if done else Status.RECEIVED.value,
                holds=execution.holds,
                local_done_at=now if done and not execution.holds else None,
            )
        )
        await conn.execute(
            update(runs)
            .where(runs.c.id == execution.run_id)
            .values(finished_at=now, status="ok" if done else "errors")
        )
        await append(
            conn,
            [
                AuditEntry(
                    AuditAction.ERASURE_EXECUTE,
                    by,
                    {
                        "request_id": request.id,
                        "run_id": execution.run_id,
                        "status": status.value,
                        "holds": execution.holds,
                        "subject_event": execution.subject_event,
                        "parts": [
                            {"policy": p.policy, "outcome": p.outcome, "rows": p.rows}
                            for p in parts
                        ],
                        "errors": execution.errors,
                    },
                )
            ],
            at=now,
        )
