"""Erasure requests as stored: create (idempotent by `reference`), read, extend, reject."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator import CoordinatorError
from coordinator.erasure.due import Regulation, due_at
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.policy.model import PolicySet
from coordinator.purge.holds import EntityTypes, HoldError, parse_entity
from coordinator.store.tables import erasure_parts, erasure_requests

__all__ = [
    "ErasureError",
    "ErasureRequest",
    "RequestConflict",
    "RequestNotFound",
    "Status",
    "UnknownSubjectType",
    "count_by_status",
    "create_request",
    "extend_request",
    "get_request",
    "list_requests",
    "parse_subject",
    "reject_request",
    "request_from_row",
    "request_parts",
]


class ErasureError(CoordinatorError, ValueError):
    """An erasure request that cannot be honoured as asked (HTTP 422, exit 2)."""


class UnknownSubjectType(ErasureError):
    """No policy maps rows to this subject type."""


class RequestNotFound(ErasureError):
    """No request has this id (HTTP 404)."""


class RequestConflict(ErasureError):
    """The request's state forbids the change (HTTP 409)."""


class Status(StrEnum):
    RECEIVED = "received"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    REJECTED = "rejected"


CLOSED = (Status.COMPLETED.value, Status.REJECTED.value)


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    id: uuid.UUID
    subject_type: str
    subject_id: str
    regulation: Regulation
    reference: str | None
    status: Status
    received_at: datetime
    due_at: datetime
    created_at: datetime
    created_by: str
    run_id: uuid.UUID | None
    extended_at: datetime | None
    extension_reason: str | None
    local_done_at: datetime | None
    completed_at: datetime | None
    rejected_at: datetime | None
    rejected_by: str | None
    rejection_reason: str | None
    holds: tuple[str, ...]

    @property
    def subject(self) -> str:
        return f"{self.subject_type}:{self.subject_id}"

    def overdue(self, now: datetime) -> bool:
        """A flag, not a status: past due and not completed (a rejection closes it too)."""
        return now > self.due_at and self.status.value not in CLOSED

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "subject": self.subject,
            "regulation": self.regulation.value,
            "reference": self.reference,
            "status": self.status.value,
            "received_at": self.received_at.isoformat(),
            "due_at": self.due_at.isoformat(),
            "overdue": self.overdue(now),
            "extended": self.extended_at is not None,
            "extension_reason": self.extension_reason,
            "created_by": self.created_by,
            "run_id": str(self.run_id) if self.run_id else None,
            "local_done_at": _iso(self.local_done_at),
            "completed_at": _iso(self.completed_at),
            "rejected_at": _iso(self.rejected_at),
            "rejected_by": self.rejected_by,
            "rejection_reason": self.rejection_reason,
            "holds": list(self.holds),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def request_from_row(row: Row[Any]) -> ErasureRequest:
    m = row._mapping
    return ErasureRequest(
        id=m["id"],
        subject_type=m["subject_type"],
        subject_id=m["subject_id"],
        regulation=Regulation(m["regulation"]),
        reference=m["reference"],
        status=Status(m["status"]),
        received_at=m["received_at"],
        due_at=m["due_at"],
        created_at=m["created_at"],
        created_by=m["created_by"],
        run_id=m["run_id"],
        extended_at=m["extended_at"],
        extension_reason=m["extension_reason"],
        local_done_at=m["local_done_at"],
        completed_at=m["completed_at"],
        rejected_at=m["rejected_at"],
        rejected_by=m["rejected_by"],
        rejection_reason=m["rejection_reason"],
        holds=tuple(m["holds"]),
    )


def _no_nul(*texts: str) -> None:
    # PostgreSQL text cannot hold NUL: refuse it as bad input, not as a database error.
    if any("\x00" in text for text in texts):
        raise ErasureError("text fields cannot contain NUL characters")


def parse_subject(text: str, policy_set: PolicySet, types: EntityTypes) -> tuple[str, str]:
    """`"user:42"` → `("user", "42")`, for a type some policy maps rows to, with the id
    in the text form of the subject columns (as holds store it: `user:042` on integer
    columns is `user:42`).

    Raises:
        UnknownSubjectType: listing the known subject types.
        ErasureError: not `TYPE:ID`, or an id no subject column can hold.
    """
    try:
        subject_type, subject_id = parse_entity(text)
    except HoldError as exc:
        raise ErasureError(str(exc).replace("an entity", "a subject")) from None
    known = sorted(policy_set.subject_types)
    if subject_type not in known:
        raise UnknownSubjectType(
            f"no policy maps rows to subject type {subject_type!r} "
            f"(known subject types: {', '.join(known) or 'none: add `subject:` to a policy'})"
        )
    try:
        forms = types.resolve(f"{subject_type}:{subject_id}")
    except HoldError as exc:
        raise ErasureError(str(exc)) from None
    # Several forms (text and integer columns) disagree on "042": keep it as written.
    return (subject_type, forms[0][1]) if len(forms) == 1 else (subject_type, subject_id)


async def create_request(
    conn: AsyncConnection,
    policy_set: PolicySet,
    types: EntityTypes,
    *,
    subject: str,
    regulation: Regulation,
    received_at: datetime | None,
    reference: str | None,
    by: str,
    now: datetime,
    default_days: int,
) -> tuple[ErasureRequest, bool]:
    """Record a request in the caller's transaction; (request, created).

    The same `reference` again returns the first request and `created=False`, whatever
    else differs: a retried submission must not erase twice or restart the clock.
    """
    subject_type, subject_id = parse_subject(subject, policy_set, types)
    if not by.strip():
        raise ErasureError("a request needs --by (who filed it)")
    received = received_at or now
    if received.tzinfo is None:
        raise ErasureError("received_at needs a timezone (e.g. 2027-01-31T09:00:00Z)")
    if received > now:
        raise ErasureError(f"received_at {received.isoformat()} is in the future")
    if reference is not None and not reference.strip():
        raise ErasureError("reference, when given, must not be blank")
    _no_nul(by, reference or "")
    request_id = uuid.uuid4()
    values = {
        "id": request_id,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "regulation": regulation.value,
        "reference": reference,
        "status": Status.RECEIVED.value,
        "received_at": received,
        "due_at": due_at(regulation, received, extended=False, default_days=default_days),
        "created_at": now,
        "created_by": by,
    }
    inserted = (
        await conn.execute(
            pg_insert(erasure_requests)
            .values(values)
            .on_conflict_do_nothing(index_elements=[erasure_requests.c.reference])
            .returning(erasure_requests.c.id)
        )
    ).first()
    if inserted is None:
        existing = (
            await conn.execute(
                select(erasure_requests).where(erasure_requests.c.reference == reference)
            )
        ).one()
        return request_from_row(existing), False
    await append(
        conn,
        [
            AuditEntry(
                AuditAction.ERASURE_CREATE,
                by,
                {
                    "request_id": request_id,
                    "subject": f"{subject_type}:{subject_id}",
                    "regulation": regulation.value,
                    "reference": reference,
                    "due_at": values["due_at"],
                },
            )
        ],
        at=now,
    )
    return await get_request(conn, request_id), True


async def get_request(conn: AsyncConnection, request_id: uuid.UUID) -> ErasureRequest:
    row = (
        await conn.execute(select(erasure_requests).where(erasure_requests.c.id == request_id))
    ).first()
    if row is None:
        raise RequestNotFound(f"no erasure request with id {request_id}")
    return request_from_row(row)


async def list_requests(
    conn: AsyncConnection,
    *,
    now: datetime,
    status: Status | None = None,
    overdue: bool = False,
    limit: int = 1000,
) -> list[ErasureRequest]:
    """Requests by due date (soonest first), optionally one status or only overdue ones."""
    query = select(erasure_requests).order_by(erasure_requests.c.due_at, erasure_requests.c.id)
    if status is not None:
        query = query.where(erasure_requests.c.status == status.value)
    if overdue:
        query = query.where(
            erasure_requests.c.due_at < now, erasure_requests.c.status.not_in(CLOSED)
        )
    return [request_from_row(row) for row in await conn.execute(query.limit(limit))]


async def request_parts(conn: AsyncConnection, request_id: uuid.UUID) -> list[dict[str, Any]]:
    """What the request did per policy, in policy order of execution."""
    p = erasure_parts.c
    rows = await conn.execute(
        select(erasure_parts).where(p.request_id == request_id).order_by(p.table_name, p.policy)
    )
    return [
        {
            "policy": row.policy,
            "table": row.table_name,
            "action": row.action,
            "outcome": row.outcome,
            "rows": row.rows,
            "held": row.held,
            "events": row.events,
            "archived_copies_deleted": row.archived_copies_deleted,
            "archived_copies_shredded": row.archived_copies_shredded,
            "shredded_key_id": row.shredded_key_id,
            "legal_basis": row.legal_basis,
            "exemption_basis": row.exemption_basis,
            "detail": row.detail,
            "done_at": _iso(row.done_at),
        }
        for row in rows
    ]


async def extend_request(
    conn: AsyncConnection,
    request_id: uuid.UUID,
    *,
    reason: str,
    by: str,
    now: datetime,
    default_days: int,
) -> ErasureRequest:
    """Extend the due date once, as the regulation allows (GDPR +2 months, CCPA +45 days)."""
    if not reason.strip():
        raise ErasureError("an extension needs a reason")
    _no_nul(reason, by)
    request = await get_request(conn, request_id)
    if request.extended_at is not None:
        raise RequestConflict(f"request {request_id} was already extended")
    if request.status.value in CLOSED:
        raise RequestConflict(f"request {request_id} is {request.status.value}")
    new_due = due_at(
        request.regulation, request.received_at, extended=True, default_days=default_days
    )
    await conn.execute(
        update(erasure_requests)
        .where(erasure_requests.c.id == request_id)
        .values(due_at=new_due, extended_at=now, extension_reason=reason)
    )
    await append(
        conn,
        [
            AuditEntry(
                AuditAction.ERASURE_EXTEND,
                by,
                {"request_id": request_id, "due_at": new_due, "reason": reason},
            )
        ],
        at=now,
    )
    return await get_request(conn, request_id)


async def reject_request(
    conn: AsyncConnection, request_id: uuid.UUID, *, reason: str, by: str, now: datetime
) -> ErasureRequest:
    """Close a request that is not completed (e.g. identity not verified).

    It stops further work on it (hold re-execution, status moves). Rows it already
    erased stay erased: `requests create` acts at once, so a rejection that must
    prevent erasure comes from a workflow that files the request only once verified.
    """
    if not reason.strip():
        raise ErasureError("a rejection needs a reason")
    _no_nul(reason, by)
    rejected = (
        await conn.execute(
            update(erasure_requests)
            .where(
                erasure_requests.c.id == request_id,
                erasure_requests.c.status.not_in(CLOSED),
            )
            .values(
                status=Status.REJECTED.value,
                rejected_at=now,
                rejected_by=by,
                rejection_reason=reason,
            )
            .returning(erasure_requests.c.id)
        )
    ).first()
    if rejected is None:
        request = await get_request(conn, request_id)
        raise RequestConflict(f"request {request_id} is already {request.status.value}")
    await append(
        conn,
        [AuditEntry(AuditAction.ERASURE_REJECT, by, {"request_id": request_id, "reason": reason})],
        at=now,
    )
    return await get_request(conn, request_id)


async def count_by_status(conn: AsyncConnection, now: datetime) -> tuple[dict[str, int], int]:
    """Requests per status, and how many are overdue (the metrics' gauges)."""
    r = erasure_requests.c
    counts = {s.value: 0 for s in Status}
    for row in await conn.execute(select(r.status, func.count()).group_by(r.status)):
        counts[row[0]] = row[1]
    overdue = (
        await conn.execute(select(func.count()).where(r.status.not_in(CLOSED), r.due_at < now))
    ).scalar_one()
    return counts, int(overdue)
