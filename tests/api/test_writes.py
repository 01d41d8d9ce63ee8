"""Holds over HTTP: reads for anyone, writes only with the bearer token; policies listed."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext, RunInProgress
from coordinator.tables import audit_log, legal_hold_entities, legal_holds, policy_results, runs
from tests.api.conftest import GLOBAL_CRON, SEED_POLICIES, TOKEN, make_client

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOLD = {"entities": ["order:1", "order:2"], "reason": "case 42", "created_by": "legal@x"}


@pytest.fixture(autouse=True)
async def clean(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    async with engine.begin() as conn:
        for table in (legal_hold_entities, legal_holds, policy_results, runs, audit_log):
            await conn.execute(delete(table))


async def test_create_list_show_release(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/holds", json={**HOLD, "id": "case-42"}, headers=AUTH)
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["id"], created["status"], created["entity_count"]) == ("case-42", "active", 2)

    listed = (await client.get("/v1/holds")).json()
    assert [h["id"] for h in listed] == ["case-42"]
    shown = (await client.get("/v1/holds/case-42")).json()
    assert shown["entities"] == ["order:1", "order:2"]

    response = await client.delete("/v1/holds/case-42", params={"by": "legal@x"}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "released"
    assert (await client.get("/v1/holds")).json() == []
    everything = (await client.get("/v1/holds", params={"include_inactive": True})).json()
    assert [h["status"] for h in everything] == ["released"]

    again = await client.delete("/v1/holds/case-42", params={"by": "legal@x"}, headers=AUTH)
    assert again.status_code == 409
    duplicate = await client.post("/v1/holds", json={**HOLD, "id": "case-42"}, headers=AUTH)
    assert duplicate.status_code == 409
    missing = await client.delete("/v1/holds/nope", params={"by": "x"}, headers=AUTH)
    assert missing.status_code == 404
    assert (await client.get("/v1/holds/nope")).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "not-bearer"],
)
async def test_writes_need_the_token(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post("/v1/holds", json=HOLD, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    response = await client.delete("/v1/holds/any", params={"by": "x"}, headers=headers)
    assert response.status_code == 401
    assert (await client.get("/v1/holds")).json() == []


@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
async def test_writes_disabled_without_a_configured_token(
    ctx: ApiContext, token: str | None
) -> None:
    configured = None if token is None else SecretStr(token)
    async with make_client(dataclasses.replace(ctx, api_token=configured)) as client:
        response = await client.post("/v1/holds", json=HOLD, headers={"Authorization": "Bearer "})
    assert response.status_code == 503
    assert "RETENTION_API_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOLD, "entities": ["order-without-id"]}, "entities"),
        ({**HOLD, "entities": []}, "entities"),
        ({**HOLD, "reason": ""}, "reason"),
        ({k: v for k, v in HOLD.items() if k != "created_by"}, "created_by"),
        ({**HOLD, "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({**HOLD, "id": "has spaces"}, "id"),
        ({**HOLD, "surprise": 1}, "surprise"),
    ],
)
async def test_bad_hold_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/v1/holds", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]


async def test_past_expiry_and_missing_releaser_are_422(client: httpx.AsyncClient) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = await client.post("/v1/holds", json={**HOLD, "expires_at": past}, headers=AUTH)
    assert response.status_code == 422
    assert "not in the future" in response.json()["detail"]
    response = await client.delete("/v1/holds/x", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "by"]


async def test_policies_with_schedule_and_latest_results(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ok_run, failed_run = uuid.uuid4(), uuid.uuid4()
    t0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(runs),
            [
                {"id": ok_run, "started_at": t0, "finished_at": t0, "status": "ok"},
                {
                    "id": failed_run,
                    "started_at": t0 + timedelta(days=1),
                    "finished_at": None,
                    "status": "errors",
                },
            ],
        )
        result = {"policy": "session_logs", "action": "delete", "errors": []}
        await conn.execute(
            insert(policy_results),
            [
                {**result, "run_id": ok_run, "status": "ok", "processed": 5, "finished_at": t0},
                {
                    **result,
                    "run_id": failed_run,
                    "status": "error",
                    "processed": 0,
                    "errors": ["boom"],
                    "finished_at": t0 + timedelta(days=1),
                },
            ],
        )
    response = await client.get("/v1/policies")
    assert response.status_code == 200, response.text
    policies = {p["name"]: p for p in response.json()}
    assert list(policies) == [p.name for p in SEED_POLICIES.policies]
    assert policies["abandoned_carts"]["schedule"] == "0 3 * * *"
    assert policies["session_logs"]["schedule"] == GLOBAL_CRON
    assert policies["purchase_records"]["definition"]["retention"] == "2557d"
    session = policies["session_logs"]
    assert session["last_result"]["status"] == "error"
    assert session["last_result"]["errors"] == ["boom"]
    assert session["last_success_at"].startswith("2026-11-28T03:00:00")
    assert policies["analytics_events"]["last_result"] is None
    assert policies["analytics_events"]["last_success_at"] is None


class FakeTrigger:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str] | None, bool]] = []
        self.busy = False

    async def __call__(self, policies: list[str] | None, force: bool) -> uuid.UUID:
        if self.busy:
            raise RunInProgress("a triggered run is still in progress")
        if policies and "nope" in policies:
            raise ValueError("unknown policy nope (known: a, b)")
        self.calls.append((policies, force))
        return uuid.UUID(int=7)


async def test_start_a_run(ctx: ApiContext) -> None:
    trigger = FakeTrigger()
    async with make_client(dataclasses.replace(ctx, trigger_run=trigger)) as client:
        response = await client.post("/v1/runs", headers=AUTH)
        assert response.status_code == 202, response.text
        assert response.json()["status_url"] == f"/v1/runs/{uuid.UUID(int=7)}"
        response = await client.post(
            "/v1/runs", json={"policies": ["session_logs"], "force": True}, headers=AUTH
        )
        assert response.status_code == 202
        assert trigger.calls == [(None, False), (["session_logs"], True)]

        unknown = await client.post("/v1/runs", json={"policies": ["nope"]}, headers=AUTH)
        assert unknown.status_code == 422
        assert unknown.json()["detail"][0]["loc"] == ["body", "policies"]
        assert "unknown policy nope" in unknown.json()["detail"][0]["msg"]
        empty = await client.post("/v1/runs", json={"policies": []}, headers=AUTH)
        assert empty.status_code == 422
        trigger.busy = True
        assert (await client.post("/v1/runs", headers=AUTH)).status_code == 409
        assert (await client.post("/v1/runs")).status_code == 401
        assert (await client.get(f"/v1/runs/{uuid.uuid4()}")).status_code == 404


async def test_starting_runs_needs_a_service(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/runs", headers=AUTH)
    assert response.status_code == 503
