"""What a request did, as a document: detail (API/CLI `show`) and certificate (JSON, HTML).

The certificate cites the audit rows of the request (its `erasure.*` entries: every purge
batch of the request lies between its creation and its execution entries) so that
`retention audit verify` proves it was not edited afterwards.
"""

from __future__ import annotations

import html
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.copies.backups import BackupHorizon
from coordinator.erasure.requests import get_request, request_from_row, request_parts
from coordinator.evidence.audit import AuditAction
from coordinator.outbox.lookup import EVENTS, event_counts
from coordinator.store.tables import (
    ack_ledger,
    audit_log,
    erasure_requests,
    expected_acks,
    legal_holds,
    outbox_batches,
)

__all__ = ["certificate", "detail", "render_html", "requests_since"]

_ACTIONS = (
    AuditAction.ERASURE_CREATE,
    AuditAction.ERASURE_EXECUTE,
    AuditAction.ERASURE_EXTEND,
    AuditAction.ERASURE_REJECT,
    AuditAction.ERASURE_HELD_DOWNSTREAM,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _services(conn: AsyncConnection, request_id: uuid.UUID) -> list[dict[str, Any]]:
    """Per expected service: the request's events it owes, and how it answered them."""
    e = expected_acks.c
    rows = await conn.execute(
        select(
            e.service,
            func.count().label("events"),
            func.count().filter(e.status.in_(("completed", "not_found"))).label("done"),
            func.count().filter(e.status == "failed").label("failed"),
            func.count().filter(e.status == "pending").label("pending"),
            func.count().filter(e.status == "held").label("held"),
            func.max(e.acknowledged_at).label("last_ack_at"),
            func.coalesce(func.sum(e.records_affected), 0).label("records"),
        )
        .join_from(EVENTS, expected_acks, e.event_id == EVENTS.c.event_id)
        .where(EVENTS.c.request_id == request_id)
        .group_by(e.service)
        .order_by(e.service)
    )
    keys = await _key_ids(conn, request_id)
    return [
        {
            "service": row.service,
            "events": row.events,
            "acknowledged": row.done,
            "failed": row.failed,
            "pending": row.pending,
            "held": row.held,
            "key_ids": keys.get(row.service, []),
            "records_affected": int(row.records),
            "last_ack_at": _iso(row.last_ack_at),
            "complete": row.done == row.events,
        }
        for row in rows
    ]


async def _key_ids(conn: AsyncConnection, request_id: uuid.UUID) -> dict[str, list[str]]:
    """Per service, the ids of the keys whose signatures verified its accepted acks of the
    request's events (SPEC §9: first 16 hex of SHA-256 over the raw public key)."""
    a = ack_ledger.c
    rows = await conn.execute(
        select(a.service, a.key_id)
        .join_from(EVENTS, ack_ledger, a.event_id == EVENTS.c.event_id)
        .where(EVENTS.c.request_id == request_id, a.accepted, a.key_id.is_not(None))
        .group_by(a.service, a.key_id)
        .order_by(a.service, a.key_id)
    )
    keys: dict[str, list[str]] = {}
    for service, key_id in rows:
        keys.setdefault(service, []).append(key_id)
    return keys


async def _events(conn: AsyncConnection, request_id: uuid.UUID) -> dict[str, int]:
    events, published = await event_counts(conn, outbox_batches.c.request_id == request_id)
    return {"events": events, "published": published}


async def detail(conn: AsyncConnection, request_id: uuid.UUID, *, now: datetime) -> dict[str, Any]:
    """The request, what it did per policy, and per service where the fan-out stands."""
    request = await get_request(conn, request_id)
    return {
        **request.as_dict(now),
        "policies": await request_parts(conn, request_id),
        "fan_out": await _events(conn, request_id),
        "services": await _services(conn, request_id),
    }


async def requests_since(
    conn: AsyncConnection,
    *,
    since: datetime,
    now: datetime,
    backups: BackupHorizon | None = None,
) -> list[dict[str, Any]]:
    """For the report: requests received since `since`, each with due, completed, when
    our backups holding the subject's data expire and, per expected service, how many
    of its events it acknowledged."""
    r, e = erasure_requests.c, expected_acks.c
    found = [
        request_from_row(row)
        for row in await conn.execute(
            select(erasure_requests).where(r.received_at >= since).order_by(r.received_at, r.id)
        )
    ]
    services: dict[uuid.UUID, list[dict[str, Any]]] = {q.id: [] for q in found}
    if found:
        rows = await conn.execute(
            select(
                EVENTS.c.request_id,
                e.service,
                func.count().label("events"),
                func.count().filter(e.status.in_(("completed", "not_found"))).label("done"),
                func.max(e.acknowledged_at).label("last_ack_at"),
            )
            .join_from(EVENTS, expected_acks, e.event_id == EVENTS.c.event_id)
            .where(EVENTS.c.request_id.in_(list(services)))
            .group_by(EVENTS.c.request_id, e.service)
            .order_by(EVENTS.c.request_id, e.service)
        )
        for row in rows:
            services[row.request_id].append(
                {
                    "service": row.service,
                    "events": row.events,
                    "acknowledged": row.done,
                    "last_ack_at": _iso(row.last_ack_at),
                }
            )
    return [
        {
            **{
                k: v
                for k, v in q.as_dict(now).items()
                if k
                in (
                    "id",
                    "subject",
                    "regulation",
                    "status",
                    "received_at",
                    "due_at",
                    "completed_at",
                    "overdue",
                    "extended",
                    "holds",
                )
            },
            "backups_expire_by": _iso((backups or _NO_BACKUPS).backups_expire_by(q.local_done_at)),
            "services": services[q.id],
        }
        for q in found
    ]


_UNSET = "unknown: the backup retention is not set"
_NO_BACKUPS = BackupHorizon(None, None, separate_keystore=False)


def _backups(
    request_done: datetime | None, parts: list[dict[str, Any]], backups: BackupHorizon
) -> dict[str, Any]:
    """What the certificate says about copies in backups (SPEC §12)."""
    shredded = [
        {
            "policy": p["policy"],
            "key_id": p["shredded_key_id"],
            "no_backup_decrypts_after": _iso(
                backups.undecryptable_after(
                    datetime.fromisoformat(p["done_at"]) if p["done_at"] else None
                )
            ),
        }
        for p in parts
        if p["shredded_key_id"] is not None and p["archived_copies_shredded"]
    ]
    return {
        **backups.settings_view(),
        "backups_expire_by": _iso(backups.backups_expire_by(request_done)),
        "statement": backups.statement(request_done),
        "crypto_shredded_keys": shredded,
    }


async def _audit_range(conn: AsyncConnection, request_id: uuid.UUID) -> dict[str, Any] | None:
    log = audit_log.c
    rows = (
        await conn.execute(
            select(log.seq, log.hash, log.action)
            .where(and_(log.action.in_(_ACTIONS), log.data["request_id"].astext == str(request_id)))
            .order_by(log.seq)
        )
    ).all()
    if not rows:
        return None
    return {
        "first": {"seq": rows[0].seq, "hash": rows[0].hash, "action": rows[0].action},
        "last": {"seq": rows[-1].seq, "hash": rows[-1].hash, "action": rows[-1].action},
        "how_to_verify": "retention audit verify: every row up to the head must chain",
    }


async def certificate(
    conn: AsyncConnection,
    request_id: uuid.UUID,
    *,
    now: datetime,
    backups: BackupHorizon | None = None,
) -> dict[str, Any]:
    """The request's certificate: subject, regulation, dates, per policy rows and action
    (or exemption), per service acknowledgements, the holds that applied, audit rows,
    and when our backups stop holding (or decrypting) the subject's data."""
    document = await detail(conn, request_id, now=now)
    done = document["local_done_at"]
    held = document["holds"]
    reasons = {}
    if held:
        reasons = dict(
            (
                await conn.execute(
                    select(legal_holds.c.id, legal_holds.c.reason).where(legal_holds.c.id.in_(held))
                )
            ).all()
        )
    return {
        "certificate": "retention-fanout erasure request certificate",
        "version": 1,
        "generated_at": now.isoformat(),
        "request_id": document["id"],
        "subject": document["subject"],
        "regulation": document["regulation"],
        "reference": document["reference"],
        "created_by": document["created_by"],
        "status": document["status"],
        "received_at": document["received_at"],
        "due_at": document["due_at"],
        "extended": document["extended"],
        "extension_reason": document["extension_reason"],
        "completed_at": document["completed_at"],
        "overdue": document["overdue"],
        "rejection_reason": document["rejection_reason"],
        "policies": [
            {
                k: p[k]
                for k in (
                    "policy",
                    "table",
                    "action",
                    "outcome",
                    "rows",
                    "held",
                    "archived_copies_deleted",
                    "archived_copies_shredded",
                    "shredded_key_id",
                    "legal_basis",
                    "exemption_basis",
                    "detail",
                )
            }
            for p in document["policies"]
        ],
        "services": document["services"],
        "holds": [{"id": h, "reason": reasons.get(h, "")} for h in held],
        "backups": _backups(
            datetime.fromisoformat(done) if done else None,
            document["policies"],
            backups or _NO_BACKUPS,
        ),
        "audit": await _audit_range(conn, request_id),
    }


def _cell(value: object) -> str:
    return html.escape("" if value is None else str(value))


def render_html(document: dict[str, Any]) -> str:
    """A printable page of the certificate: every value escaped, no scripts, no assets."""
    facts = [
        ("Subject", document["subject"]),
        ("Regulation", document["regulation"]),
        ("Reference", document["reference"]),
        ("Filed by", document["created_by"]),
        ("Status", document["status"]),
        ("Received", document["received_at"]),
        ("Due", document["due_at"]),
        ("Extended", document["extension_reason"] if document["extended"] else "no"),
        ("Completed", document["completed_at"] or "not yet"),
        ("Backups", document["backups"]["statement"]),
        ("Request id", document["request_id"]),
        ("Generated", document["generated_at"]),
    ]
    fact_rows = "".join(f"<tr><th>{_cell(k)}</th><td>{_cell(v)}</td></tr>" for k, v in facts)
    policy_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{_cell(p[k])}</td>"
            for k in ("policy", "table", "action", "outcome", "rows", "held")
        )
        + f"<td>{_cell(p['exemption_basis'] or p['legal_basis'])}</td>"
        + f"<td>{_cell(p['detail'])}</td></tr>"
        for p in document["policies"]
    )
    service_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{_cell(s[k])}</td>"
            for k in (
                "service",
                "events",
                "acknowledged",
                "pending",
                "held",
                "failed",
                "last_ack_at",
            )
        )
        + f"<td>{_cell(', '.join(s['key_ids']) or '—')}</td>"
        + "</tr>"
        for s in document["services"]
    )
    hold_rows = "".join(
        f"<tr><td>{_cell(h['id'])}</td><td>{_cell(h['reason'])}</td></tr>"
        for h in document["holds"]
    )
    shredded_rows = "".join(
        f"<tr><td>{_cell(k['policy'])}</td><td>{_cell(k['key_id'])}</td>"
        f"<td>{_cell(k['no_backup_decrypts_after'] or _UNSET)}</td></tr>"
        for k in document["backups"]["crypto_shredded_keys"]
    )
    audit = document["audit"]
    audit_text = (
        f"audit rows {audit['first']['seq']}–{audit['last']['seq']} "
        f"(last hash {audit['last']['hash']})"
        if audit
        else "no audit rows"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Erasure certificate {_cell(document["request_id"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #999; padding: 0.3em 0.6em; text-align: left; }}
</style></head><body>
<h1>Erasure request certificate</h1>
<table>{fact_rows}</table>
<h2>Per policy</h2>
<table><tr><th>policy</th><th>table</th><th>action</th><th>outcome</th><th>rows</th>
<th>held</th><th>basis</th><th>detail</th></tr>{policy_rows}</table>
<h2>Downstream services</h2>
<table><tr><th>service</th><th>events</th><th>acknowledged</th><th>pending</th><th>held</th>
<th>failed</th><th>last acknowledgement</th><th>signing key ids</th></tr>{service_rows}</table>
<h2>Crypto-shredded copies</h2>
<table><tr><th>policy</th><th>destroyed data key</th><th>no backup decrypts after</th></tr>
{shredded_rows}</table>
<h2>Holds that applied</h2>
<table><tr><th>hold</th><th>reason</th></tr>{hold_rows}</table>
<p>{_cell(audit_text)}</p>
</body></html>
"""
