"""Read-only answers about runs: the recent run log, and each policy's latest results.

Shared by the HTTP API (`/v1/runs`, `/v1/policies`) and the service's gauges. Times are
returned as datetimes; the API's pydantic models serialize them.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.tables import policy_results, runs

__all__ = ["get_run", "last_results", "last_successes", "purge_results", "recent_runs"]

_RESULT_COLUMNS = (
    "policy",
    "action",
    "status",
    "processed",
    "held",
    "events",
    "duration_s",
    "oldest_unprocessed_days",
    "errors",
    "finished_at",
)


def _result(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _RESULT_COLUMNS}


async def get_run(conn: AsyncConnection, run_id: uuid.UUID) -> dict[str, Any] | None:
    found = await _runs(conn, select(runs).where(runs.c.id == run_id), policy=None)
    return found[0] if found else None


async def recent_runs(
    conn: AsyncConnection, *, limit: int, policy: str | None = None
) -> list[dict[str, Any]]:
    """The latest `limit` runs, newest first, each with its per-policy results.

    With `policy`, only runs that included that policy, and only its result.
    """
    query = select(runs).order_by(runs.c.started_at.desc(), runs.c.id).limit(limit)
    return await _runs(conn, query, policy=policy)


async def _runs(
    conn: AsyncConnection, query: Select[Any], *, policy: str | None
) -> list[dict[str, Any]]:
    if policy is not None:
        query = query.where(
            select(policy_results.c.run_id)
            .where(policy_results.c.run_id == runs.c.id, policy_results.c.policy == policy)
            .exists()
        )
    rows = (await conn.execute(query)).all()
    if not rows:
        return []
    results_query = (
        select(policy_results)
        .where(policy_results.c.run_id.in_([r.id for r in rows]))
        .order_by(policy_results.c.started_at, policy_results.c.policy)
    )
    if policy is not None:
        results_query = results_query.where(policy_results.c.policy == policy)
    results: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for result in await conn.execute(results_query):
        results[result.run_id].append(_result(result))
    return [
        {
            "id": r.id,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "status": r.status,
            "trigger": r.trigger,
            "forced": r.forced,
            "policies": results[r.id],
        }
        for r in rows
    ]


async def last_results(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
    """Each policy's most recent result, whatever its status."""
    pr = policy_results.c
    rank = (
        func.row_number()
        .over(
            partition_by=pr.policy,
            order_by=(pr.finished_at.desc().nulls_last(), pr.started_at.desc()),
        )
        .label("rank")
    )
    ranked = select(policy_results, rank).subquery()
    latest = select(ranked).where(ranked.c.rank == 1)
    return {row.policy: _result(row) for row in await conn.execute(latest)}


async def last_successes(conn: AsyncConnection) -> dict[str, datetime]:
    """When each policy last finished a run without errors."""
    pr = policy_results.c
    rows = await conn.execute(
        select(pr.policy, func.max(pr.finished_at))
        .where(pr.status == "ok", pr.finished_at.is_not(None))
        .group_by(pr.policy)
    )
    return {policy: at for policy, at in rows}


async def purge_results(conn: AsyncConnection, *, since: datetime) -> list[dict[str, Any]]:
    """Local purge results per run and policy, for runs started since `since`, oldest
    first: what each policy did, held back and failed on, with its action and legal basis."""
    pr = policy_results.c
    rows = await conn.execute(
        select(
            runs.c.id,
            runs.c.started_at,
            runs.c.trigger,
            pr.policy,
            pr.action,
            pr.legal_basis,
            pr.status,
            pr.processed,
            pr.held,
            pr.events,
            pr.errors,
        )
        .join_from(policy_results, runs, runs.c.id == pr.run_id)
        .where(runs.c.started_at >= since)
        .order_by(runs.c.started_at, runs.c.id, pr.policy)
    )
    return [
        {
            "run_id": str(row.id),
            "started_at": row.started_at.isoformat(),
            "trigger": row.trigger,
            "policy": row.policy,
            "action": row.action,
            "legal_basis": row.legal_basis,
            "status": row.status,
            "processed": row.processed,
            "held": row.held,
            "events": row.events,
            "errors": len(row.errors),
            "error_texts": list(row.errors),
        }
        for row in rows
    ]
