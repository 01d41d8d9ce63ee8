"""SPEC §10 over HTTP: every /v1 route needs a token, scopes, the tokens file, body limit."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext, create_app
from coordinator.api.limits import MAX_BODY_BYTES
from coordinator.api.tokens import Scope, add_token, new_token
from coordinator.purge.holds import create_hold, entity_types
from coordinator.store.tables import (
    audit_log,
    legal_hold_entities,
    legal_holds,
    policy_results,
    runs,
)
from tests.api.conftest import SEED_POLICIES, auth, make_client

SAMPLE_PATH_VALUES = {
    "entity_type": "order",
    "entity_id": "1",
    "event_id": "00000000-0000-0000-0000-000000000001",
    "run_id": "00000000-0000-0000-0000-000000000001",
    "hold_id": "h",
    "service": "billing",
    "request_id": "00000000-0000-0000-0000-000000000001",
    "job_id": "00000000-0000-0000-0000-000000000001",
    "name": "crm",
}


def v1_requests(ctx: ApiContext) -> list[tuple[str, str]]:
    """(method, path) of every /v1 route the app serves, path parameters filled in."""
    found = []
    for template, operations in create_app(ctx).openapi()["paths"].items():
        if template.startswith("/v1"):
            path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PATH_VALUES[m.group(1)], template)
            found += [(method.upper(), path) for method in sorted(operations)]
    return found


async def test_every_v1_route_needs_a_token(ctx: ApiContext, tokens: dict[Scope, str]) -> None:
    requests = v1_requests(ctx)
    assert len(requests) >= 8  # policies, runs (3), entities, events, holds (4)
    async with make_client(ctx) as client:
        for method, path in requests:
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                response = await client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, response.text)
            # A valid token gets past the check (the route itself may still say 404/422, or
            # 503 for runs: this app has no scheduler to start them).
            response = await client.request(method, path, headers=auth(tokens[Scope.ADMIN]))
            assert response.status_code not in (401, 403), (method, path, response.text)
            assert "TOKENS_FILE" not in response.text, (method, path)


async def test_without_a_tokens_file_every_v1_route_is_503_naming_the_setting(
    ctx: ApiContext, tokens: dict[Scope, str]
) -> None:
    closed = dataclasses.replace(ctx, tokens=None)
    async with make_client(closed, tokens[Scope.ADMIN]) as client:
        for method, path in v1_requests(closed):
            response = await client.request(method, path)
            assert response.status_code == 503, (method, path)
            assert "RETENTION_API_TOKENS_FILE" in response.json()["detail"]
        assert (await client.get("/metrics")).status_code == 200


async def test_the_tokens_file_is_reread_when_it_changes(
    ctx: ApiContext, tokens_file: Path, tokens: dict[Scope, str]
) -> None:
    async with make_client(ctx) as client:
        late = new_token("late-reader", Scope.READ)
        assert (await client.get("/v1/holds", headers=auth(late.token))).status_code == 401
        add_token(tokens_file, late.entry)
        assert (await client.get("/v1/holds", headers=auth(late.token))).status_code == 200

        # Revoked by removing its line.
        kept = [line for line in tokens_file.read_text().splitlines() if "late-reader" not in line]
        tokens_file.write_text("\n".join(kept) + "\n")
        assert (await client.get("/v1/holds", headers=auth(late.token))).status_code == 401

        # A file that no longer parses closes the API instead of keeping stale tokens.
        tokens_file.write_text(tokens_file.read_text() + "  - {name: broken\n")
        response = await client.get("/v1/holds", headers=auth(tokens[Scope.ADMIN]))
        assert response.status_code == 503
        assert "RETENTION_API_TOKENS_FILE" in response.json()["detail"]


class Chunks:
    """A request body of `count` chunks that records how many were pulled."""

    def __init__(self, count: int, size: int = 64 * 1024) -> None:
        self.count, self.size, self.pulled = count, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.pulled += 1
            yield b"x" * self.size


async def test_bodies_over_1_mib_are_refused_before_parsing_and_the_token_check(
    ctx: ApiContext,
) -> None:
    async with make_client(ctx) as client:
        # No token at all: the size is checked first.
        response = await client.post("/v1/holds", content=b"{" * (MAX_BODY_BYTES + 1))
        assert response.status_code == 413
        assert response.json() == {"detail": f"request body over {MAX_BODY_BYTES} bytes"}
        # Without a Content-Length (chunked), reading stops at the first chunk past 1 MiB:
        # 100 MiB offered, 17 chunks of 64 KiB pulled.
        body = Chunks(1600)
        response = await client.post("/v1/holds", content=body)
        assert response.status_code == 413
        assert body.pulled == MAX_BODY_BYTES // body.size + 1
        # At the limit, the body reaches the app (which wants a token).
        response = await client.post("/v1/holds", content=b" " * MAX_BODY_BYTES)
        assert response.status_code == 401


@pytest.fixture
async def secrets_in_the_database(engine: AsyncEngine) -> AsyncIterator[tuple[str, ...]]:
    """A hold with a telling reason and entity id, and a failed run with an error text."""
    reason, entity, error = "SECRET-CASE-REASON", "987654321", "UniqueViolation alice@example.com"
    async with engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, SEED_POLICIES),
            entities=[f"order:{entity}"],
            reason=reason,
            created_by="legal",
            now=datetime.now(UTC),
        )
        run_id = uuid.uuid4()
        await conn.execute(insert(runs).values(id=run_id, started_at=datetime.now(UTC)))
        await conn.execute(
            insert(policy_results).values(
                run_id=run_id, policy="orders", action="delete", status="error", errors=[error]
            )
        )
    yield reason, entity, error
    async with engine.begin() as conn:
        for table in (legal_hold_entities, legal_holds, policy_results, runs, audit_log):
            await conn.execute(delete(table))


async def test_open_routes_reveal_no_ids_reasons_or_error_texts(
    ctx: ApiContext, tokens: dict[Scope, str], secrets_in_the_database: tuple[str, ...]
) -> None:
    async with make_client(ctx) as client:
        open_answers = [
            (await client.get(path)).text for path in ("/healthz", "/metrics", "/openapi.json")
        ]
        # The same data is there for a reader: the check below can fail.
        shown = (await client.get("/v1/runs", headers=auth(tokens[Scope.READ]))).text
        shown += (await client.get("/v1/holds", headers=auth(tokens[Scope.READ]))).text
    for secret in secrets_in_the_database:
        assert all(secret not in answer for answer in open_answers), secret
    assert secrets_in_the_database[0] in shown
    assert secrets_in_the_database[2] in shown


async def test_openapi_says_by_fields_are_ignored(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    created_by = spec["components"]["schemas"]["HoldCreate"]["properties"]["created_by"]
    assert created_by["deprecated"] is True
    assert created_by["description"].startswith("Ignored over HTTP")
    (by,) = [
        p for p in spec["paths"]["/v1/holds/{hold_id}"]["delete"]["parameters"] if p["name"] == "by"
    ]
    assert by["deprecated"] is True
    assert by["description"].startswith("Ignored")
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()
