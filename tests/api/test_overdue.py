"""`GET /v1/services/{name}/overdue`: the overdue list, keyset-paginated, read scope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.store.tables import expected_acks
from tests.overdue_rows import delete_events, insert_events

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


async def test_pages_list_each_overdue_event_once_in_deadline_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    crm, other = f"crm_{uuid.uuid4().hex[:6]}", f"other_{uuid.uuid4().hex[:6]}"
    overdue = await insert_events(engine, {crm: "pending", other: "completed"}, n=5, deadline=T0)
    failed = await insert_events(engine, {crm: "failed"}, n=1, deadline=T0 + timedelta(hours=1))
    done = await insert_events(engine, {crm: "completed", other: "pending"}, n=2, deadline=T0)
    open_ = await insert_events(engine, {crm: "pending"}, n=2, deadline=T0, state="pending")
    try:
        seen: list[dict[str, object]] = []
        after: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if after is not None:
                params["after"] = after
            response = await client.get(f"/v1/services/{crm}/overdue", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            seen.extend(body["items"])
            pages += 1
            after = body["next"]
            if after is None:
                break
            # A row completing between two pages shifts nothing: the cursor is a key.
            if pages == 1:
                async with engine.begin() as conn:
                    await conn.execute(
                        update(expected_acks)
                        .where(expected_acks.c.event_id == overdue[0])
                        .values(status="completed")
                    )
        assert pages == 3
        assert [row["event_id"] for row in seen] == [str(e) for e in (*overdue, *failed)]
        assert {row["service"] for row in seen} == {crm}
        first, last = seen[0], seen[-1]
        assert (first["status"], first["last_ack_at"], first["policy"]) == (
            "pending",
            None,
            "inactive_users",
        )
        assert first["deadline"] == "2026-10-01T12:00:00Z"
        assert (last["status"], last["attempt"]) == ("failed", 1)
        assert last["last_ack_at"] is not None

        # The other service is overdue only on the events `crm` already finished.
        response = await client.get(f"/v1/services/{other}/overdue")
        assert [row["event_id"] for row in response.json()["items"]] == [str(e) for e in done]
        assert response.json()["next"] is None
    finally:
        await delete_events(engine, [*overdue, *failed, *done, *open_])


async def test_bad_cursor_and_name_are_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/services/crm/overdue", params={"after": "bm90LWEtY3Vyc29y"})
    assert response.status_code == 422
    assert response.json()["detail"] == "after: not a cursor of this list"
    response = await client.get("/v1/services/bad;name/overdue")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "name"]
    response = await client.get("/v1/services/crm/overdue", params={"limit": 1001})
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]
