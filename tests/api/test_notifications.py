"""`GET /v1/notifications`: each webhook delivery's state, read scope, no payload."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.store.tables import notifications

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


async def test_lists_deliveries_newest_first_by_status(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    hook = f"hook_{uuid.uuid4().hex[:6]}"
    async with engine.begin() as conn:
        await conn.execute(
            insert(notifications),
            [
                {
                    "webhook": hook,
                    "kind": "service_overdue",
                    "key": f"service_overdue:crm:2026-12-0{day}",
                    "payload": {"service": "crm", "secret_marker": "not-shown"},
                    "status": status,
                    "attempts": attempts,
                    "created_at": T0,
                    "next_attempt_at": T0,
                    "last_error": error,
                }
                for day, status, attempts, error in (
                    (1, "delivered", 1, None),
                    (2, "pending", 3, "HTTP 503"),
                )
            ],
        )
    try:
        response = await client.get("/v1/notifications", params={"limit": 1000})
        assert response.status_code == 200, response.text
        mine = [row for row in response.json() if row["webhook"] == hook]
        assert [row["key"][-2:] for row in mine] == ["02", "01"]
        assert "not-shown" not in response.text
        pending = await client.get("/v1/notifications", params={"status": "pending"})
        [row] = [row for row in pending.json() if row["webhook"] == hook]
        assert (row["attempts"], row["last_error"], row["next_attempt_at"]) == (
            3,
            "HTTP 503",
            "2026-12-01T08:00:00Z",
        )
        response = await client.get("/v1/notifications", params={"status": "lost"})
        assert response.json()["detail"][0]["loc"] == ["query", "status"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(notifications).where(notifications.c.webhook == hook))
