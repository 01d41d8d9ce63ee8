"""Holds and runs over HTTP: writes need a `write` token and record its name; policies listed."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext, RunInProgress
from coordinator.api.tokens import Scope
from coordinator.settings import Settings
from coordinator.store.tables import (
    audit_log,
    legal_hold_entities,
    legal_holds,
    policy_results,
    runs,
)
from tests.api.conftest import GLOBAL_CRON, SEED_POLICIES, auth, make_client

HOLD = {"entities": ["order:1", "order:2"], "reason": "case 42"}


@pytest.fixture
def writer(tokens: dict[Scope, str]) -> dict[str, str]:
    return auth(tokens[Scope.WRITE])


@pytest.fixture(autouse=True)
async def clean(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    async with engine.begin() as conn:
        for table in (legal_hold_entities, legal_holds, policy_results, runs, audit_log):
            await conn.execute(delete(table))


async def test_create_list_show_release(
    client: httpx.AsyncClient, engine: AsyncEngine, writer: dict[str, str]
) -> None:
    # A `created_by`/`by` in the request is ignored: the actor is the token's name.
    body = {**HOLD, "id": "case-42", "created_by": "someone-else"}
    response = await client.post("/v1/holds", json=body, headers=writer)
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["id"], created["status"], created["entity_count"]) == ("case-42", "active", 2)
    assert created["created_by"] == "write-bot"

    listed = (await client.get("/v1/holds")).json()
    assert [h["id"] for h in listed] == ["case-42"]
    shown = (await client.get("/v1/holds/case-42")).json()
    assert shown["entities"] == ["order:1", "order:2"]

    response = await client.delete("/v1/holds/case-42", params={"by": "legal@x"}, headers=writer)
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["released_by"]) == ("released", "write-bot")
    async with engine.connect() as conn:
        actors = (await conn.execute(select(audit_log.c.action, audit_log.c.actor))).all()
    assert sorted(actors) == [("hold.create", "write-bot"), ("hold.release", "write-bot")]
    assert (await client.get("/v1/holds")).json() == []
    everything = (await client.get("/v1/holds", params={"include_inactive": True})).json()
    assert [h["status"] for h in everything] == ["released"]

    again = await client.delete("/v1/holds/case-42", headers=writer)
    assert again.status_code == 409
    duplicate = await client.post("/v1/holds", json={**HOLD, "id": "case-42"}, headers=writer)
    assert duplicate.status_code == 409
    missing = await client.delete("/v1/holds/nope", headers=writer)
    assert missing.status_code == 404
    assert (await client.get("/v1/holds/nope")).status_code == 404


async def test_writes_need_a_write_token(
    ctx: ApiContext, tokens: dict[Scope, str], writer: dict[str, str]
) -> None:
    async with make_client(ctx) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {tokens[Scope.WRITE]}"},
        ):
            response = await client.post("/v1/holds", json=HOLD, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            response = await client.delete("/v1/holds/any", headers=headers)
            assert response.status_code == 401, headers
        reader = auth(tokens[Scope.READ])
        response = await client.post("/v1/holds", json=HOLD, headers=reader)
        assert response.status_code == 403
        assert "'read-bot' has scope read; this needs write" in response.json()["detail"]
        assert (await client.delete("/v1/holds/any", headers=reader)).status_code == 403
        assert (await client.post("/v1/runs", headers=reader)).status_code == 403
        assert (await client.get("/v1/holds", headers=reader)).json() == []
        admin = auth(tokens[Scope.ADMIN])
        response = await client.post("/v1/holds", json=HOLD, headers=admin)
        assert response.status_code == 201
        assert response.json()["created_by"] == "admin-bot"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOLD, "entities": ["order-without-id"]}, "entities"),
        ({**HOLD, "entities": []}, "entities"),
        ({**HOLD, "reason": ""}, "reason"),
        ({**HOLD, "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({**HOLD, "id": "has spaces"}, "id"),
        ({**HOLD, "surprise": 1}, "surprise"),
    ],
)
async def test_bad_hold_is_422_naming_the_field(
    client: httpx.AsyncClient, writer: dict[str, str], body: dict[str, object], field: str
) -> None:
    response = await client.post("/v1/holds", json=body, headers=writer)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]


async def test_past_expiry_is_422(client: httpx.AsyncClient, writer: dict[str, str]) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = await client.post("/v1/holds", json={**HOLD, "expires_at": past}, headers=writer)
    assert response.status_code == 422
    assert "not in the future" in response.json()["detail"]


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
        self.calls: list[tuple[list[str] | None, bool, str]] = []
        self.busy = False

    async def __call__(self, policies: list[str] | None, force: bool, actor: str) -> uuid.UUID:
        if self.busy:
            raise RunInProgress("a triggered run is still in progress")
        if policies and "nope" in policies:
            raise ValueError("unknown policy nope (known: a, b)")
        self.calls.append((policies, force, actor))
        return uuid.UUID(int=7)


async def test_start_a_run(ctx: ApiContext, tokens: dict[Scope, str]) -> None:
    trigger = FakeTrigger()
    async with make_client(
        dataclasses.replace(ctx, trigger_run=trigger), tokens[Scope.WRITE]
    ) as client:
        response = await client.post("/v1/runs")
        assert response.status_code == 202, response.text
        assert response.json()["status_url"] == f"/v1/runs/{uuid.UUID(int=7)}"
        forced = {"policies": ["session_logs"], "force": True}
        refused = await client.post("/v1/runs", json=forced)
        assert refused.status_code == 403
        assert "force needs admin" in refused.json()["detail"]
        response = await client.post("/v1/runs", json=forced, headers=auth(tokens[Scope.ADMIN]))
        assert response.status_code == 202
        assert trigger.calls == [(None, False, "write-bot"), (["session_logs"], True, "admin-bot")]

        unknown = await client.post("/v1/runs", json={"policies": ["nope"]})
        assert unknown.status_code == 422
        assert unknown.json()["detail"][0]["loc"] == ["body", "policies"]
        assert "unknown policy nope" in unknown.json()["detail"][0]["msg"]
        empty = await client.post("/v1/runs", json={"policies": []})
        assert empty.status_code == 422
        trigger.busy = True
        assert (await client.post("/v1/runs")).status_code == 409
        assert (await client.post("/v1/runs", headers={"Authorization": ""})).status_code == 401
        assert (await client.get(f"/v1/runs/{uuid.uuid4()}")).status_code == 404


async def test_starting_runs_needs_a_service(
    client: httpx.AsyncClient, writer: dict[str, str]
) -> None:
    response = await client.post("/v1/runs", headers=writer)
    assert response.status_code == 503


@pytest.mark.parametrize("entity", ["Order:42", "оrder:42", "customer:1"])
async def test_holds_on_unknown_entity_types_are_422_naming_the_known_types(
    client: httpx.AsyncClient, writer: dict[str, str], entity: str
) -> None:
    response = await client.post("/v1/holds", json={**HOLD, "entities": [entity]}, headers=writer)
    assert response.status_code == 422, response.text
    # Entity types and subject types (the seed file maps rows to `user`).
    known = sorted({p.entity_type for p in SEED_POLICIES.policies} | SEED_POLICIES.subject_types)
    assert "user" in known
    assert f"known types: {', '.join(known)}" in response.json()["detail"]


async def test_policies_state_when_backups_holding_deleted_rows_expire(
    ctx: ApiContext, tokens: dict[Scope, str]
) -> None:
    async with make_client(ctx, tokens[Scope.READ]) as client:
        unset = (await client.get("/v1/policies")).json()
    assert {(p["backup_retention"], p["backups_expire_by"]) for p in unset} == {(None, None)}
    with_backups = dataclasses.replace(ctx, settings=Settings(backup_retention="35d"))
    before = datetime.now(UTC)
    async with make_client(with_backups, tokens[Scope.READ]) as client:
        policies = (await client.get("/v1/policies")).json()
    for policy in policies:
        assert policy["backup_retention"] == "35d"
        expires = datetime.fromisoformat(policy["backups_expire_by"])
        assert before + timedelta(days=35) <= expires <= datetime.now(UTC) + timedelta(days=35)
