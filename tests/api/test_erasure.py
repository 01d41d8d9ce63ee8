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
from coordinator.api.tokens import Scope
from coordinator.clock import SystemClock
from coordinator.erasure.service import Erasure
from coordinator.metrics import Metrics
from coordinator.settings import Settings
from demo.seed_data import create_seed_tables, drop_seed_tables, populate, session_logs
from tests.api.conftest import SEED_POLICIES, auth, make_client

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
    ctx: ApiContext,
    seeded: AsyncEngine,
    coordinator_db: str,
    metrics: Metrics,
    tokens: dict[Scope, str],
) -> AsyncIterator[httpx.AsyncClient]:
    """Reads with the `read` token unless a request sends another."""
    settings = Settings(database_url=coordinator_db, hash_secret="test-secret")
    erasure = Erasure(seeded, SEED_POLICIES, settings, SystemClock(), metrics)
    context = dataclasses.replace(ctx, erasure=erasure)
    async with make_client(context, tokens[Scope.READ]) as client:
        yield client


async def _sessions_of(engine: AsyncEngine, user: str) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).where(session_logs.c.user_id == user)
        return int((await conn.execute(query)).scalar_one())


async def test_create_is_idempotent_by_reference_and_acts(
    erasure_client: httpx.AsyncClient, seeded: AsyncEngine, tokens: dict[Scope, str]
) -> None:
    writer, admin = auth(tokens[Scope.WRITE]), auth(tokens[Scope.ADMIN])
    assert await _sessions_of(seeded, SUBJECT) > 0
    body = {
        "subject": f"user:{SUBJECT}",
        "regulation": "gdpr",
        "received_at": "2026-01-31T10:00:00Z",
        "reference": "api-1",
    }
    first = await erasure_client.post("/v1/erasure-requests", json=body, headers=writer)
    assert first.status_code == 201, first.text
    created = first.json()
    assert created["status"] == "in_progress"
    assert created["due_at"].startswith("2026-02-28T10:00:00")
    assert created["overdue"] is True
    assert await _sessions_of(seeded, SUBJECT) == 0

    again = await erasure_client.post(
        "/v1/erasure-requests", json={**body, "subject": "user:user-00001"}, headers=writer
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
        headers=writer,
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["due_at"].startswith("2026-04-30T10:00:00")
    assert extended.json()["extended"] is True
    twice = await erasure_client.post(
        f"/v1/erasure-requests/{created['id']}/extend", json={"reason": "again"}, headers=writer
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
    assert certificate["created_by"] == "write-bot"  # the token's name

    reject = f"/v1/erasure-requests/{created['id']}/reject"
    body = {"reason": "identity not verified"}
    refused = await erasure_client.post(reject, json=body, headers=writer)
    assert refused.status_code == 403  # rejecting needs admin
    rejected = await erasure_client.post(reject, json=body, headers=admin)
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["overdue"] is False


async def test_unknown_subject_type_is_422_listing_the_known_types(
    erasure_client: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    response = await erasure_client.post(
        "/v1/erasure-requests",
        json={"subject": "customer:9", "regulation": "ccpa"},
        headers=auth(tokens[Scope.WRITE]),
    )
    assert response.status_code == 422
    assert "known subject types: user" in response.json()["detail"]
    nul = await erasure_client.post(
        "/v1/erasure-requests",
        json={"subject": "user:user-00002", "regulation": "ccpa", "reference": "a\u0000b"},
        headers=auth(tokens[Scope.WRITE]),
    )
    assert nul.status_code == 422


async def test_writes_need_a_write_token(
    erasure_client: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    body = {"subject": "user:x", "regulation": "gdpr"}
    response = await erasure_client.post("/v1/erasure-requests", json=body)
    assert response.status_code == 403  # the client's read token
    response = await erasure_client.post(
        "/v1/erasure-requests", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert response.status_code == 401
    missing = await erasure_client.post(
        "/v1/erasure-requests/00000000-0000-0000-0000-000000000000/reject",
        json={"reason": "x"},
        headers=auth(tokens[Scope.ADMIN]),
    )
    assert missing.status_code == 404
