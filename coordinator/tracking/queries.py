"""Read-only answers about completion, shared by the CLI and the HTTP API.

Every function returns JSON-ready data (RFC 3339 UTC strings for times, ids as strings),
so the CLI prints it and the API returns it unchanged.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Row,
    Text,
    and_,
    case,
    cast,
    extract,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.copies.backups import BackupHorizon
from coordinator.copies.verification.queries import answers_by_service, entity_verifications
from coordinator.evidence.audit import AuditAction
from coordinator.evidence.pseudonyms import Pepper
from coordinator.outbox.lookup import EVENTS, by_entity, by_event_ids, events
from coordinator.store.tables import (
    ack_ledger,
    audit_log,
    erasure_parts,
    event_status,
    expected_acks,
    legal_hold_entities,
    legal_holds,
    policy_results,
    runs,
    service_registry,
)
from coordinator.tracking.deadlines import ack_deadline

__all__ = [
    "ServiceState",
    "certificate",
    "entity_status",
    "event_status_of",
    "local_purges",
    "report",
    "service_events",
    "services_completion",
]

_DONE = ("completed", "not_found")
_OPEN = ("pending", "failed")
_HOLDABLE = (*_OPEN, "overdue")
ServiceState = Literal["pending", "overdue", "failed", "held", "completed", "waived"]
"""Where one service's answer to one event stands, as the console and its JSON count it."""
"""States shown as `held` while an active hold covers the event's entity."""


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def entity_status(
    conn: AsyncConnection,
    entity_type: str,
    entity_id: str,
    *,
    now: datetime,
    pepper: Pepper | None = None,
) -> list[dict[str, Any]]:
    """Every retention event of one entity, oldest first, with each service's answer.

    An event not yet completed whose entity is under an active hold at `now` shows the
    state `held` (reminders are not sent for it). With `pepper`, events whose stored id is
    already an HMAC (past the outbox retention, SPEC §13) are found too.
    """
    names = [entity_id] if pepper is None else [entity_id, pepper.pseudonym(entity_type, entity_id)]
    return await _events(
        conn,
        and_(event_status.c.entity_type == entity_type, event_status.c.entity_id.in_(names)),
        and_(
            by_entity(entity_type, entity_id),
            # Verify events are listed apart (coordinator/copies/verification/queries.py).
            EVENTS.c.event_type != "verify",
        ),
        now=now,
    )


async def event_status_of(
    conn: AsyncConnection, event_id: uuid.UUID, *, now: datetime
) -> dict[str, Any] | None:
    found = await _events(
        conn, event_status.c.event_id == event_id, by_event_ids([event_id]), now=now
    )
    return found[0] if found else None


async def _held_now(
    conn: AsyncConnection, entities: set[tuple[str, str]], now: datetime
) -> set[tuple[str, str]]:
    if not entities:
        return set()
    h, e = legal_holds.c, legal_hold_entities.c
    rows = await conn.execute(
        select(e.entity_type, e.entity_id)
        .join_from(legal_hold_entities, legal_holds, h.id == e.hold_id)
        .where(
            tuple_(e.entity_type, e.entity_id).in_(sorted(entities)),
            h.released_at.is_(None),
            or_(h.expires_at.is_(None), h.expires_at > now),
        )
    )
    return {(row.entity_type, row.entity_id) for row in rows}


async def _events(
    conn: AsyncConnection,
    tracked: ColumnElement[bool],
    outboxed: ColumnElement[bool],
    *,
    now: datetime,
) -> list[dict[str, Any]]:
    statuses = {r.event_id: r for r in await conn.execute(select(event_status).where(tracked))}
    local = {r.event_id: r for r in await conn.execute(events(outboxed))}
    ids = sorted(statuses.keys() | local.keys())
    if not ids:
        return []
    services: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for row in await conn.execute(
        select(expected_acks)
        .where(expected_acks.c.event_id.in_(ids))
        .order_by(expected_acks.c.event_id, expected_acks.c.service)
    ):
        services[row.event_id].append(
            {
                "service": row.service,
                "status": row.status,
                "acknowledged_at": _ts(row.acknowledged_at),
                "first_ack_at": _ts(row.first_ack_at),
                "records_affected": row.records_affected,
                "attempt": row.attempt,
                "acks_received": row.acks_received,
                "detail": row.detail or "",
                "joined_late": row.joined_late,
                "waived_by": row.waived_by,
                "deadline": row.deadline,
            }
        )
    rejected: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    a = ack_ledger.c
    for row in await conn.execute(
        select(a.event_id, a.service, a.status, a.reject_reason, a.received_at)
        .where(a.event_id.in_(ids), ~a.accepted)
        .order_by(a.event_id, a.id)
    ):
        rejected[row.event_id].append(
            {
                "service": row.service,
                "status": row.status,
                "reason": row.reject_reason,
                "received_at": _ts(row.received_at),
            }
        )
    held = await _held_now(
        conn, {(r.entity_type, r.entity_id) for r in (*statuses.values(), *local.values())}, now
    )
    documents = [
        _event_document(statuses.get(i), local.get(i), services[i], rejected[i], held) for i in ids
    ]
    return sorted(documents, key=lambda d: (d["initiated_at"] or "", d["event_id"]))


def _event_document(
    status: Row[Any] | None,
    local: Row[Any] | None,
    services: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    held: set[tuple[str, str]],
) -> dict[str, Any]:
    source = status if status is not None else local
    assert source is not None
    if (
        status is not None
        and status.state in _HOLDABLE
        and ((status.entity_type, status.entity_id) in held)
    ):
        state = "held"
    elif status is not None:
        state = status.state
    elif local is not None and local.published_at is not None:
        state = "published"  # the tracker has not picked it up yet
    else:
        state = "unpublished"
    return {
        "event_id": str(source.event_id),
        "policy": source.policy,
        "action": source.event_type,
        "entity_type": source.entity_type,
        "entity_id": source.entity_id,
        "state": state,
        "legal_basis": local.legal_basis if local is not None else None,
        "purged_at": _ts(local.created_at) if local is not None else None,
        "initiated_at": _ts(source.initiated_at),
        "published_at": _ts(
            status.published_at if status is not None else local.published_at if local else None
        ),
        "deadline": _ts(status.deadline) if status is not None else None,
        "completed_at": _ts(status.completed_at) if status is not None else None,
        "overdue_at": _ts(status.overdue_at) if status is not None else None,
        "reminders_sent": status.reminders_sent if status is not None else 0,
        # Each service's own deadline: its declared completion_deadline, else the event's.
        "services": [
            {**svc, "deadline": _ts(svc["deadline"] or (status.deadline if status else None))}
            for svc in services
        ],
        "rejected_acks": len(rejected),
        "rejected": rejected,
    }


async def report(conn: AsyncConnection, *, since: datetime) -> dict[str, Any]:
    """Per policy and per service, for events published since `since`: outcomes and the
    median and 95th percentile of seconds from publication to completion."""
    s, e = event_status.c, expected_acks.c

    event_seconds = extract("epoch", s.completed_at - s.published_at)
    by_policy = await conn.execute(
        select(
            s.policy,
            func.count(),
            *(func.count().filter(s.state == state) for state in _STATES),
            *_percentiles(case((s.state == "completed", event_seconds))),
            func.count().filter(s.state == "resurrected"),
            func.count().filter(s.state == "held"),
        )
        .where(s.published_at >= since)
        .group_by(s.policy)
        .order_by(s.policy)
    )
    ack_seconds = extract("epoch", e.acknowledged_at - s.published_at)
    by_service = await conn.execute(
        select(
            e.service,
            func.count(),
            func.count().filter(e.status.in_(_DONE)),
            func.count().filter(e.status == "failed"),
            func.count().filter(e.status.in_(_OPEN), s.state == "overdue"),
            func.count().filter(e.status == "pending"),
            *_percentiles(case((e.status.in_(_DONE), ack_seconds))),
            func.count().filter(e.status == "waived"),
            func.count().filter(e.status == "still_present"),
            func.count().filter(e.status == "held"),
        )
        .join_from(expected_acks, event_status, s.event_id == e.event_id)
        .where(s.published_at >= since)
        .group_by(e.service)
        .order_by(e.service)
    )
    a = ack_ledger.c
    rejected = await conn.execute(
        select(a.service, a.reject_reason, func.count())
        .where(~a.accepted, a.received_at >= since)
        .group_by(a.service, a.reject_reason)
        .order_by(a.service, a.reject_reason)
    )
    return {
        "since": _ts(since),
        # `held`: events (per policy) and acks (per service) not executed under a hold,
        # neither late nor done (SPEC §15).
        "policies": [
            {**_outcome_row("policy", row[:-2]), "resurrected": row[-2], "held": row[-1]}
            for row in by_policy
        ],
        "services": [
            {
                **_outcome_row("service", row[:-3]),
                "waived": row[-3],
                "still_present": row[-2],
                "held": row[-1],
            }
            for row in by_service
        ],
        # Answers to verify events asked since `since` (SPEC §12); `unsupported` is no proof.
        "verification": await answers_by_service(conn, since=since),
        "rejected_acks": [
            {"service": row[0], "reason": row[1], "count": row[2]} for row in rejected
        ],
    }


# Event states in report order; a service's counts use the same names (see docs).
_STATES = ("completed", "failed", "overdue", "pending")


def _percentiles(seconds: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    # percentile_cont ignores NULLs: the CASE leaves only what completed.
    return [func.percentile_cont(q).within_group(seconds) for q in (0.5, 0.95)]


def _outcome_row(scope: str, row: Sequence[Any]) -> dict[str, Any]:
    name, events, completed, failed, overdue, pending, median, p95 = tuple(row)
    return {
        scope: name,
        "events": events,
        "completed": completed,
        "failed": failed,
        "overdue": overdue,
        "pending": pending,
        "median_seconds": None if median is None else round(float(median), 3),
        "p95_seconds": None if p95 is None else round(float(p95), 3),
    }


async def certificate(
    conn: AsyncConnection,
    entity_type: str,
    entity_id: str,
    *,
    now: datetime,
    pepper: Pepper | None = None,
    backups: BackupHorizon | None = None,
) -> dict[str, Any] | None:
    """A deletion certificate: what was done to one entity, where, when, the audit rows
    (sequence number and chain hash) that record each step, and when our backups holding
    it expire. None for an unknown entity."""
    events = await entity_status(conn, entity_type, entity_id, now=now, pepper=pepper)
    local = await local_purges(conn, entity_type, entity_id)
    if not events and not local:
        return None
    ids = [uuid.UUID(e["event_id"]) for e in events]
    acks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    a, log = ack_ledger.c, audit_log.c
    by_seq, by_link = audit_log.alias("by_seq"), audit_log.alias("by_link")
    for row in await conn.execute(
        select(
            a.event_id,
            a.service,
            a.status,
            a.records_affected,
            a.attempt,
            a.acknowledged_at,
            func.coalesce(by_seq.c.seq, by_link.c.seq).label("seq"),
            func.coalesce(by_seq.c.hash, by_link.c.hash).label("hash"),
        )
        .select_from(ack_ledger)
        .join(by_seq, by_seq.c.seq == a.audit_seq, isouter=True)
        .join(by_link, _linked(by_link, a.audit_link, AuditAction.ACKS_ACCEPTED), isouter=True)
        .where(a.event_id.in_(ids), a.accepted)
        .order_by(a.acknowledged_at, a.id)
    ):
        acks[str(row.event_id)].append(
            {
                "service": row.service,
                "status": row.status,
                "records_affected": row.records_affected,
                "attempt": row.attempt,
                "acknowledged_at": _ts(row.acknowledged_at),
                "audit": _ref(row.seq, row.hash),
            }
        )
    refs = await _audit_refs(conn, ids)
    head = (await conn.execute(select(log.seq, log.hash).order_by(log.seq.desc()).limit(1))).first()
    verified = await entity_verifications(conn, entity_type, entity_id, pepper=pepper)
    documents = []
    for event in events:
        tracked_seq, completed_seq = refs.get(event["event_id"], (None, None))
        documents.append(
            {
                "event_id": event["event_id"],
                "policy": event["policy"],
                "action": event["action"],
                "legal_basis": event["legal_basis"],
                "state": event["state"],
                "purged_at": event["purged_at"],
                "published_at": event["published_at"],
                "completed_at": event["completed_at"],
                "expected_services": [s["service"] for s in event["services"]],
                "services": [
                    {k: s[k] for k in ("service", "status", "acknowledged_at", "records_affected")}
                    for s in event["services"]
                ],
                "acknowledgements": acks.get(event["event_id"], []),
                "evidence": {"tracked": tracked_seq, "completed": completed_seq},
            }
        )
    return {
        "certificate": "retention-fanout deletion certificate",
        "version": 1,
        "entity": {"type": entity_type, "id": entity_id},
        "generated_at": _ts(now),
        # Nothing downstream to wait for when every purge was local only.
        "complete": all(d["state"] == "completed" for d in documents),
        # A service found still holding data after its ack: complete again only once a
        # later delete is acked (SPEC §15).
        "resurrected": any(d["state"] == "resurrected" for d in documents),
        "local_purges": local,
        "events": documents,
        "verifications": [
            {k: v[k] for k in ("event_id", "trigger", "requested_at", "outcome", "services")}
            for v in verified
        ],
        "backups": _backups(events, backups),
        "audit_chain": {
            "head": _ref(head.seq, head.hash) if head is not None else None,
            "how_to_verify": "retention audit verify: every row up to the head must chain",
        },
    }


async def local_purges(
    conn: AsyncConnection, entity_type: str, entity_id: str
) -> list[dict[str, Any]]:
    """Every purge batch that acted on the entity in the coordinator's database, from the
    audit chain (`purge.batch` entries name the ids they acted on) and the run log.

    This is the evidence for entities of policies that do not fan out, which have no
    event: the batch's audit seq and hash, its run and trigger, the policy, action and
    legal basis. The `purge.batch` rows are read by action and entity type, then matched
    on the ids list; certificates are asked for one entity at a time.
    """
    log, r, p, q = audit_log.c, runs.c, policy_results.c, erasure_parts.c
    rows = await conn.execute(
        select(
            log.seq,
            log.hash,
            log.at,
            log.data["run_id"].astext.label("run_id"),
            log.data["policy"].astext.label("policy"),
            log.data["action"].astext.label("action"),
            log.data["request_id"].astext.label("request_id"),
            log.data["events"].astext.label("events"),
            r.trigger,
            # A run records the basis per policy; a request per policy of the request.
            func.coalesce(p.legal_basis, q.legal_basis).label("legal_basis"),
        )
        .select_from(
            audit_log.outerjoin(runs, cast(r.id, Text) == log.data["run_id"].astext)
            .outerjoin(
                policy_results,
                and_(p.run_id == r.id, p.policy == log.data["policy"].astext),
            )
            .outerjoin(
                erasure_parts,
                and_(
                    cast(q.request_id, Text) == log.data["request_id"].astext,
                    q.policy == log.data["policy"].astext,
                ),
            )
        )
        .where(
            log.action == AuditAction.PURGE_BATCH,
            log.data["entity_type"].astext == entity_type,
            log.data["ids"].contains(func.jsonb_build_array(entity_id)),
        )
        .order_by(log.seq)
    )
    return [
        {
            "policy": row.policy,
            "action": row.action,
            "legal_basis": row.legal_basis,
            "run_id": row.run_id,
            "trigger": row.trigger,
            "request_id": row.request_id,
            "fanned_out": (row.events or "0") != "0",
            "purged_at": _ts(row.at),
            "audit": _ref(row.seq, row.hash),
        }
        for row in rows
    ]


def _backups(events: list[dict[str, Any]], backups: BackupHorizon | None) -> dict[str, Any]:
    """Backups of our database keep the entity's rows until the last backup taken before
    its last purge expires (SPEC §12)."""
    horizon = backups or BackupHorizon(None, None, separate_keystore=False)
    purged = [datetime.fromisoformat(e["purged_at"]) for e in events if e["purged_at"]]
    last = max(purged) if purged else None
    expires = horizon.backups_expire_by(last)
    return {
        **horizon.settings_view(),
        "backups_expire_by": expires.isoformat() if expires else None,
        "statement": horizon.statement(last),
    }


def _ref(seq: int | None, digest: str | None) -> dict[str, Any] | None:
    return None if seq is None else {"seq": seq, "hash": digest}


def _linked(entry: Any, link: ColumnElement[Any], action: AuditAction) -> ColumnElement[bool]:
    """`entry` (an alias of the audit log) is the `action` entry of an ack batch whose rows
    carry `link` (migration 0031; NULL for rows that carry their entry's seq)."""
    return and_(entry.c.link == link, entry.c.action == action.value)


async def _audit_refs(
    conn: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    s = event_status.c
    tracked, completed = audit_log.alias("tracked"), audit_log.alias("completed")
    linked = audit_log.alias("linked")
    rows = await conn.execute(
        select(
            s.event_id,
            tracked.c.seq,
            tracked.c.hash,
            func.coalesce(completed.c.seq, linked.c.seq),
            func.coalesce(completed.c.hash, linked.c.hash),
        )
        .select_from(event_status)
        .join(tracked, tracked.c.seq == s.tracked_audit_seq, isouter=True)
        .join(completed, completed.c.seq == s.completed_audit_seq, isouter=True)
        .join(
            linked,
            _linked(linked, s.completed_audit_link, AuditAction.EVENTS_COMPLETED),
            isouter=True,
        )
        .where(s.event_id.in_(ids))
    )
    return {str(r[0]): (_ref(r[1], r[2]), _ref(r[3], r[4])) for r in rows}


def _overdue(now: datetime) -> ColumnElement[bool]:
    # An open ack past its own deadline counts as overdue at once, even before the
    # tracker's next pass marks the event `overdue`: the page answers "what is late now".
    # A service declared with a longer deadline is not late because another one is.
    # `state <> 'completed'` restricts nothing an open ack can have, but lets PostgreSQL
    # start from the open events' partial index instead of scanning every event.
    return and_(event_status.c.state != "completed", ack_deadline() <= now)


def _state_filter(state: ServiceState, now: datetime) -> ColumnElement[bool]:
    e = expected_acks.c
    if state == "completed":
        return e.status.in_(_DONE)
    if state == "failed":
        return e.status == "failed"
    if state in ("waived", "held"):
        # A held answer is neither late nor done (SPEC §15): it waits for the release.
        return e.status == state
    if state == "overdue":
        return and_(e.status.in_(_OPEN), _overdue(now))
    return and_(e.status.in_(_OPEN), ~_overdue(now))


async def services_completion(conn: AsyncConnection, *, now: datetime) -> list[dict[str, Any]]:
    """Every service that is registered or expected somewhere, by name: what it handles,
    and how many expected acknowledgements are pending, overdue, failed, held, completed
    and waived."""
    e, s = expected_acks.c, event_status.c
    # Two reads instead of one join over every acknowledgement: the done ones are only
    # counted (one pass over the ack table), and only the few open ones (its partial
    # index) meet their events for the deadline.
    settled = await conn.execute(
        select(
            e.service,
            func.count().filter(e.status.in_(_DONE)),
            func.count().filter(e.status == "waived"),
            func.count().filter(e.status == "held"),
        )
        .where(~e.status.in_(_OPEN))
        .group_by(e.service)
    )
    open_counts = await conn.execute(
        select(
            e.service,
            func.count().filter(~_overdue(now)),
            func.count().filter(_overdue(now)),
            func.count().filter(e.status == "failed"),
            func.min(ack_deadline()),
        )
        .join_from(expected_acks, event_status, s.event_id == e.event_id)
        .where(e.status.in_(_OPEN))
        .group_by(e.service)
    )
    found: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return found.setdefault(
            name,
            {
                "service": name,
                "registered": False,
                "handles": [],
                "sdk_version": None,
                "last_seen": None,
                "pending": 0,
                "overdue": 0,
                "failed": 0,
                "held": 0,
                "completed": 0,
                "waived": 0,
                "next_deadline": None,
            },
        )

    for row in await conn.execute(
        select(service_registry).order_by(
            service_registry.c.service, service_registry.c.entity_type, service_registry.c.action
        )
    ):
        item = entry(row.service)
        active = row.retired_at is None
        item["registered"] = item["registered"] or active
        if active:
            item["handles"].append(f"{row.action} {row.entity_type}")
        if item["last_seen"] is None or row.last_seen > item["last_seen"]:
            item["last_seen"], item["sdk_version"] = row.last_seen, row.sdk_version
    for item in found.values():
        item["last_seen"] = _ts(item["last_seen"])
    for name, completed, waived, held in settled:
        entry(name).update(completed=completed, waived=waived, held=held)
    for name, pending, overdue, failed, next_deadline in open_counts:
        entry(name).update(
            pending=pending, overdue=overdue, failed=failed, next_deadline=_ts(next_deadline)
        )
    return [found[name] for name in sorted(found)]


async def service_events(
    conn: AsyncConnection,
    service: str,
    *,
    state: ServiceState,
    now: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    """One service's expected acknowledgements in `state`: open ones earliest deadline
    first, completed ones most recently published first."""
    e, s = expected_acks.c, event_status.c
    # Open ones are few (the acks' partial index finds them); completed ones are most of
    # the table, so they are read newest first along the events' published_at index and
    # the scan stops after `limit`.
    order = (
        (s.published_at.desc(), s.event_id)
        if state in ("completed", "waived")
        else (ack_deadline(), s.event_id)
    )
    rows = await conn.execute(
        select(
            s.event_id,
            s.policy,
            s.event_type,
            s.entity_type,
            s.entity_id,
            s.published_at,
            ack_deadline().label("deadline"),
            s.state,
            e.status,
            e.acknowledged_at,
            e.attempt,
            e.detail,
            e.waived_by,
        )
        .join_from(expected_acks, event_status, s.event_id == e.event_id)
        .where(e.service == service, _state_filter(state, now))
        .order_by(*order)
        .limit(limit)
    )
    return [
        {
            "event_id": str(row.event_id),
            "policy": row.policy,
            "action": row.event_type,
            "entity_type": row.entity_type,
            "entity_id": row.entity_id,
            "published_at": _ts(row.published_at),
            "deadline": _ts(row.deadline),
            "event_state": row.state,
            "status": row.status,
            "acknowledged_at": _ts(row.acknowledged_at),
            "attempt": row.attempt,
            "detail": row.detail or "",
            "waived_by": row.waived_by,
        }
        for row in rows
    ]
