"""Read routes: runs, entity and event completion; bad input is a 422 naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.store.tables import outbox_batches, outbox_marks, policy_results, runs
from demo.seed_data import create_seed_tables, drop_seed_tables
from tests.outbox import insert_rows, outbox_rows

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


async def test_entity_and_event_status(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    rows = outbox_rows(2, entity_type="order", event_type="anonymize", start=7000)
    await insert_rows(engine, rows)
    try:
        entity_id = rows[0]["entity_id"]
        response = await client.get(f"/v1/entities/order/{entity_id}")
        assert response.status_code == 200, response.text
        [event] = response.json()
        assert event["event_id"] == str(rows[0]["event_id"])
        assert (event["entity_type"], event["entity_id"]) == ("order", entity_id)
        assert event["state"] == "unpublished"
        assert event["services"] == []

        response = await client.get(f"/v1/events/{rows[1]['event_id']}")
        assert response.status_code == 200
        assert response.json()["entity_id"] == rows[1]["entity_id"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(outbox_marks))
            await conn.execute(delete(outbox_batches))


async def test_unknown_entity_and_event_are_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/entities/order/999999999")
    assert response.status_code == 404
    assert "order:999999999" in response.json()["detail"]
    assert (await client.get(f"/v1/events/{uuid.uuid4()}")).status_code == 404


async def test_entity_ids_are_normalised_like_holds(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """`order/042` finds `order:42` (orders.id is a bigint); an id no orders row can have
    is a 422 naming the known types; a type no policy has is looked up as written."""
    async with engine.begin() as conn:
        await drop_seed_tables(conn)
        await create_seed_tables(conn)
    rows = outbox_rows(1, entity_type="order", event_type="anonymize", entity_ids=["42"])
    rows += outbox_rows(1, entity_type="gadget", event_type="delete", entity_ids=["0042"])
    await insert_rows(engine, rows)
    try:
        for path in ("/v1/entities/order/042", "/v1/entities/order/+42", "/v1/entities/order/42"):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert [e["event_id"] for e in response.json()] == [str(rows[0]["event_id"])]
        response = await client.get("/v1/entities/order/４２")  # full-width digits
        assert response.status_code == 422
        assert "known types:" in response.json()["detail"]
        assert (await client.get("/v1/entities/gadget/0042")).status_code == 200
        assert (await client.get("/v1/entities/gadget/42")).status_code == 404
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(outbox_marks))
            await conn.execute(delete(outbox_batches))
            await drop_seed_tables(conn)


async def test_bad_input_is_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/events/not-a-uuid")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "event_id"]
    response = await client.get("/v1/runs", params={"limit": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]
    response = await client.get("/v1/entities/bad type;/1")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "entity_type"]


async def test_runs_newest_first_with_policy_results(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(runs),
            [
                {
                    "id": first,
                    "started_at": T0,
                    "finished_at": T0,
                    "status": "ok",
                    "trigger": "cli",
                },
                {
                    "id": second,
                    "started_at": T0 + timedelta(days=1),
                    "finished_at": None,
                    "status": "errors",
                    "trigger": "schedule:global",
                },
            ],
        )
        await conn.execute(
            insert(policy_results),
            [
                {
                    "run_id": first,
                    "policy": "session_logs",
                    "action": "delete",
                    "status": "ok",
                    "processed": 12,
                    "errors": [],
                    "finished_at": T0,
                },
                {
                    "run_id": second,
                    "policy": "session_logs",
                    "action": "delete",
                    "status": "error",
                    "processed": 0,
                    "errors": ["guard: too many rows"],
                    "finished_at": None,
                },
                {
                    "run_id": second,
                    "policy": "orders",
                    "action": "anonymize",
                    "status": "ok",
                    "processed": 3,
                    "errors": [],
                    "finished_at": None,
                },
            ],
        )
    try:
        response = await client.get("/v1/runs")
        assert response.status_code == 200, response.text
        listed = response.json()
        assert [r["id"] for r in listed] == [str(second), str(first)]
        assert listed[0]["trigger"] == "schedule:global"
        assert {p["policy"] for p in listed[0]["policies"]} == {"session_logs", "orders"}
        assert listed[1]["policies"][0]["processed"] == 12

        only = (await client.get("/v1/runs", params={"policy": "orders", "limit": 5})).json()
        assert [r["id"] for r in only] == [str(second)]
        assert [p["policy"] for p in only[0]["policies"]] == ["orders"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(policy_results))
            await conn.execute(delete(runs))
