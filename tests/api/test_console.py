"""The console over HTTP without a browser: sign-in, sessions, CSRF, scopes, HTML errors.

tests/console drives the same pages in Chromium; these pin the rules cheaply."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.api.tokens import Scope, hash_token
from coordinator.console.app import ROUTERS
from coordinator.console.sessions import COOKIE, SessionSigner
from coordinator.store.tables import (
    audit_log,
    legal_hold_entities,
    legal_holds,
    outbox_batches,
    outbox_marks,
)
from demo.seed_data import create_seed_tables, drop_seed_tables
from tests.api.conftest import make_client
from tests.api.test_access import SAMPLE_PATH_VALUES
from tests.outbox import insert_rows, outbox_rows

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def browser(ctx: ApiContext) -> AsyncIterator[httpx.AsyncClient]:
    """A client without a bearer token, keeping cookies like a browser."""
    async with make_client(ctx) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, token: str) -> str:
    """Sign in; return the CSRF token the overview's forms carry."""
    response = await client.post("/ui/sign-in", data={"token": token, "next": "/ui/"})
    assert response.status_code == 303, response.text
    page = await client.get("/ui/")
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


async def test_pages_redirect_to_sign_in_and_back(
    browser: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    response = await browser.get("/ui/runs?limit=5")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/sign-in?next=%2Fui%2Fruns%3Flimit%3D5"

    response = await browser.post(
        "/ui/sign-in", data={"token": tokens[Scope.READ], "next": "/ui/runs?limit=5"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/runs?limit=5"
    cookie = response.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Max-Age=28800" in cookie
    assert tokens[Scope.READ] not in cookie

    page = await browser.get("/ui/runs")
    assert page.status_code == 200
    assert "read-bot" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


async def test_wrong_token_and_offsite_next(
    browser: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    response = await browser.post("/ui/sign-in", data={"token": "rtk_nope"})
    assert response.status_code == 401
    assert "not valid" in response.text
    assert COOKIE not in response.headers.get("set-cookie", "")
    response = await browser.post(
        "/ui/sign-in", data={"token": tokens[Scope.READ], "next": "//evil.example/ui/"}
    )
    assert response.headers["location"] == "/ui/"
    response = await browser.post(
        "/ui/sign-in",
        data={"token": tokens[Scope.READ]},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403


async def test_forged_expired_and_revoked_sessions_are_signed_out(
    browser: httpx.AsyncClient, ctx: ApiContext, tokens: dict[Scope, str]
) -> None:
    signer = SessionSigner(ctx.ui_secret, lifetime_s=60)
    expired, _ = signer.issue(hash_token(tokens[Scope.ADMIN]), now=0)
    forged, _ = SessionSigner(b"x" * 32, lifetime_s=60).issue(hash_token(tokens[Scope.ADMIN]))
    unknown, _ = signer.issue(hash_token("rtk_revoked"))
    for value in (expired, forged, unknown, "garbage", forged.split(".")[0] + ".AAAA"):
        browser.cookies.set(COOKIE, value)
        assert (await browser.get("/ui/")).status_code == 303, value


async def test_read_token_sees_no_write_forms_and_gets_403(
    browser: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    csrf = await sign_in(browser, tokens[Scope.READ])
    page = await browser.get("/ui/holds")
    assert page.status_code == 200
    assert page.text.count('method="post"') == 1  # sign-out, nothing else
    assert 'id="new-hold"' not in page.text
    response = await browser.post(
        "/ui/holds", data={"csrf_token": csrf, "reason": "r", "entities": "user:1"}
    )
    assert response.status_code == 403
    assert "read-bot" in response.text
    assert "this needs write" in response.text
    response = await browser.post("/ui/holds/any/release", data={"csrf_token": csrf})
    assert response.status_code == 403
    page = await browser.get("/ui/erasure-requests")
    assert page.status_code == 200
    assert 'id="new-request"' not in page.text
    response = await browser.post(
        "/ui/erasure-requests",
        data={"csrf_token": csrf, "subject": "user:1", "regulation": "gdpr"},
    )
    assert response.status_code == 403


async def test_cookie_reads_v1_but_never_writes_it(
    browser: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    await sign_in(browser, tokens[Scope.ADMIN])
    assert (await browser.get("/v1/holds")).status_code == 200
    assert (await browser.get("/v1/completion/services")).status_code == 200
    response = await browser.post("/v1/holds", json={"entities": ["user:1"], "reason": "x"})
    assert response.status_code == 401


async def test_hold_form_needs_csrf_and_records_the_token_name(
    browser: httpx.AsyncClient, engine: AsyncEngine, tokens: dict[Scope, str]
) -> None:
    csrf = await sign_in(browser, tokens[Scope.WRITE])
    form = {"reason": "case 7", "entities": "order:1\n\norder:2\n", "hold_id": "console-h1"}
    response = await browser.post("/ui/holds", data=form)
    assert response.status_code == 403
    assert "CSRF" in response.text
    response = await browser.post("/ui/holds", data={**form, "csrf_token": "wrong"})
    assert response.status_code == 403
    try:
        response = await browser.post(
            "/ui/holds",
            data={**form, "csrf_token": csrf},
            files={"entities_file": ("ids.txt", b"order:3\r\norder:1\n", "text/plain")},
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/ui/holds/console-h1"
        detail = await browser.get("/ui/holds/console-h1")
        assert "order:3" in detail.text
        response = await browser.post(
            "/ui/holds/console-h1/release", headers={"X-CSRF-Token": csrf}
        )
        assert response.status_code == 303
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(audit_log.c.action, audit_log.c.actor).where(
                        audit_log.c.data["hold_id"].astext == "console-h1"
                    )
                )
            ).all()
        assert sorted(rows) == [("hold.create", "write-bot"), ("hold.release", "write-bot")]

        bad = await browser.post(
            "/ui/holds", data={"csrf_token": csrf, "reason": "r", "entities": "planet:9"}
        )
        assert bad.status_code == 422
        assert "planet" in bad.text
        assert 'value="r"' in bad.text
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(legal_hold_entities))
            await conn.execute(delete(legal_holds))


async def test_admin_forms_only_for_admin_with_csrf_and_a_reason(
    ctx: ApiContext, tokens: dict[Scope, str]
) -> None:
    waive = "/ui/services/billing/events/00000000-0000-0000-0000-000000000001/waive"
    for scope, name in ((Scope.READ, "read-bot"), (Scope.WRITE, "write-bot")):
        async with make_client(ctx) as client:
            csrf = await sign_in(client, tokens[scope])
            page = await client.get("/ui/services/billing?state=pending")
            assert page.status_code == 200
            assert 'id="retire-service"' not in page.text
            assert 'class="inline waive"' not in page.text
            for path in ("/ui/services/billing/retire", waive):
                response = await client.post(path, data={"csrf_token": csrf, "reason": "r"})
                assert response.status_code == 403, (scope, path)
                assert name in response.text
                assert "this needs admin" in response.text

    async with make_client(ctx) as client:
        csrf = await sign_in(client, tokens[Scope.ADMIN])
        page = await client.get("/ui/services/billing")
        assert 'id="retire-service"' in page.text
        response = await client.post("/ui/services/billing/retire", data={"reason": "r"})
        assert response.status_code == 403
        assert "CSRF" in response.text
        response = await client.post(
            "/ui/services/billing/retire", data={"csrf_token": csrf, "reason": "  "}
        )
        assert response.status_code == 422
        assert 'role="alert"' in response.text
        assert "needs a reason" in response.text
        response = await client.post(waive, data={"csrf_token": csrf, "reason": ""})
        assert response.status_code == 422
        response = await client.post(waive, data={"csrf_token": csrf, "reason": "gone"})
        assert response.status_code == 404
        assert "No open acknowledgement" in response.text
        response = await client.post(
            "/ui/services/billing/retire", data={"csrf_token": csrf, "reason": "decommissioned"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/services/billing?state=waived"
        page = await client.get("/ui/services/billing?state=waived")
        assert page.status_code == 200
        assert "Waived answers of billing" in page.text


async def test_every_page_answers_html_for_missing_things(
    browser: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    await sign_in(browser, tokens[Scope.READ])
    for path in (
        "/ui/",
        "/ui/runs",
        "/ui/holds?all=true",
        "/ui/services",
        "/ui/services/x",
        "/ui/erasure-requests?status=on_hold&overdue=true",
    ):
        response = await browser.get(path)
        assert response.status_code == 200, (path, response.text)
        assert "<title>" in response.text
    for path, code in (
        ("/ui/runs/00000000-0000-0000-0000-000000000000", 404),
        ("/ui/runs/not-a-uuid", 422),
        ("/ui/holds/nope", 404),
        ("/ui/entities/user/nobody", 404),
        ("/ui/entities/order/999999999", 404),
        ("/ui/services/x?state=bogus", 422),
        ("/ui/erasure-requests/00000000-0000-0000-0000-000000000000", 404),
        ("/ui/erasure-requests?status=bogus", 422),
    ):
        response = await browser.get(path)
        assert response.status_code == code, path
        assert response.headers["content-type"].startswith("text/html")
    assert (await browser.get("/ui/static/vendor/htmx.min.js")).status_code == 200


async def test_without_a_tokens_file_every_ui_route_is_503_naming_the_setting(
    ctx: ApiContext,
) -> None:
    closed = dataclasses.replace(ctx, tokens=None)
    app_routes = [
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods)
    ]
    assert len(app_routes) >= 12
    async with make_client(closed) as client:
        for method, template in app_routes:
            path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PATH_VALUES[m.group(1)], template)
            form = {"token": "t", "reason": "r"} if method == "POST" else None
            response = await client.request(method, path, data=form)
            assert response.status_code == 503, (method, path)
            assert "RETENTION_API_TOKENS_FILE" in response.text, (method, path)


async def test_sign_out_needs_the_csrf_token_and_ends_the_session(
    browser: httpx.AsyncClient, tokens: dict[Scope, str]
) -> None:
    csrf = await sign_in(browser, tokens[Scope.READ])
    assert (await browser.post("/ui/sign-out")).status_code == 403
    response = await browser.post("/ui/sign-out", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert f'{COOKIE}=""' in response.headers["set-cookie"]
    assert (await browser.get("/ui/")).status_code == 303


async def test_the_console_entity_page_normalises_the_id_too(
    browser: httpx.AsyncClient, tokens: dict[Scope, str], engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await drop_seed_tables(conn)
        await create_seed_tables(conn)
    rows = outbox_rows(1, entity_type="order", event_type="anonymize", entity_ids=["42"])
    await insert_rows(engine, rows)
    try:
        await sign_in(browser, tokens[Scope.READ])
        response = await browser.get("/ui/entities/order/042")
        assert response.status_code == 200, response.text
        assert str(rows[0]["event_id"]) in response.text
        assert (await browser.get("/ui/entities/order/4x")).status_code == 422
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(outbox_marks))
            await conn.execute(delete(outbox_batches))
            await drop_seed_tables(conn)
