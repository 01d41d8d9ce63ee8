"""Erasure request routes (SPEC §11) on the seed tables: create (201, then 200 for the
same reference), unknown subject types (422 listing the known ones), tokens, extend,
reject, detail and the certificate in JSON and HTML."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.clock import SystemClock
from coordinator.erasure.service import Erasure
from coordinator.metrics import Metrics
from coordinator.settings import Settings
from demo.seed_data import create_seed_tables, drop_seed_tables, populate, session_logs
from tests.api.conftest import SEED_POLICIES, TOKEN, make_client

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUBJECT = "user-00000"


@pytest.fixture
async def seeded(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await drop_seed_tables(conn)
        await create_seed_tables(conn)
        await populate(conn, datetime.now(UTC), per_category=2)
    return engine


@pytest.fixture
async def erasure_client(
    ctx: ApiContext, seeded: AsyncEngine, coordinator_db: str, metrics: Metrics
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=coordinator_db, hash_secret="test-secret")
    erasure = Erasure(seeded, SEED_POLICIES, settings, SystemClock(), metrics)
    async with make_client(dataclasses.replace(ctx, erasure=erasure)) as client:
        yield client


async def _sessions_of(engine: AsyncEngine, user: str) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).where(session_logs.c.user_id == user)
        return int((await conn.execute(query)).scalar_one())


async def test_create_is_idempotent_by_reference_and_acts(
    erasure_client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    assert await _sessions_of(seeded, SUBJECT) > 0
    body = {
        "subject": f"user:{SUBJECT}",
        "regulation": "gdpr",
        "received_at": "2026-01-31T10:00:00Z",
        "reference": "api-1",
    }
    first = await erasure_client.post("/v1/erasure-requests", json=body, headers=AUTH)
    assert first.status_code == 201, first.text
    created = first.json()
    assert created["status"] == "in_progress"
    assert created["due_at"].startswith("2026-02-28T10:00:00")
    assert created["overdue"] is True
    assert await _sessions_of(seeded, SUBJECT) == 0

    again = await erasure_client.post(
        "/v1/erasure-requests", json={**body, "subject": "user:user-00001"}, headers=AUTH
    )
    assert again.status_code == 200
    assert again.json()["id"] == created["id"]
    assert await _sessions_of(seeded, "user-00001") > 0

    detail = (await erasure_client.get(f"/v1/erasure-requests/{created['id']}")).json()
    parts = {p["policy"]: p for p in detail["policies"]}
    assert parts["purchase_records"]["outcome"] == "exempt"
    assert parts["purchase_records"]["exemption_basis"].startswith("GDPR Art. 17(3)(b)")
    assert parts["session_logs"]["outcome"] == "done"

    extended = await erasure_client.post(
        f"/v1/erasure-requests/{created['id']}/extend",
        json={"reason": "complex request"},
        headers=AUTH,
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["due_at"].startswith("2026-04-30T10:00:00")
    assert extended.json()["extended"] is True
    twice = await erasure_client.post(
        f"/v1/erasure-requests/{created['id']}/extend", json={"reason": "again"}, headers=AUTH
    )
    assert twice.status_code == 409

    listed = await erasure_client.get("/v1/erasure-requests", params={"overdue": "true"})
    assert created["id"] in {r["id"] for r in listed.json()}  # April 2026 is past too

    html = await erasure_client.get(
        f"/v1/erasure-requests/{created['id']}/certificate", params={"format": "html"}
    )
    assert html.headers["content-type"].startswith("text/html")
    assert "GDPR Art. 17(3)(b)" in html.text
    certificate = (
        await erasure_client.get(f"/v1/erasure-requests/{created['id']}/certificate")
    ).json()
    assert certificate["subject"] == f"user:{SUBJECT}"
    assert certificate["audit"]["first"]["action"] == "erasure.create"

    rejected = await erasure_client.post(
        f"/v1/erasure-requests/{created['id']}/reject",
        json={"reason": "identity not verified"},
        headers=AUTH,
    )
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["overdue"] is False


async def test_unknown_subject_type_is_422_listing_the_known_types(
    erasure_client: httpx.AsyncClient,
) -> None:
    response = await erasure_client.post(
        "/v1/erasure-requests",
        json={"subject": "customer:9", "regulation": "ccpa"},
        headers=AUTH,
    )
    assert response.status_code == 422
    assert "known subject types: user" in response.json()["detail"]


async def test_writes_need_the_token(erasure_client: httpx.AsyncClient) -> None:
    response = await erasure_client.post(
        "/v1/erasure-requests", json={"subject": "user:x", "regulation": "gdpr"}
    )
    assert response.status_code == 401
    missing = await erasure_client.post(
        "/v1/erasure-requests/00000000-0000-0000-0000-000000000000/reject",
        json={"reason": "x"},
        headers=AUTH,
    )
    assert missing.status_code == 404
