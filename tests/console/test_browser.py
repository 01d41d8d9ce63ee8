"""The console in Debian's Chromium (SPEC §14): sign-in, every page accessible, overdue
services after a deadline passes, a hold created and released through the form and found
in the audit chain, a certificate downloaded, and a read token kept away from writes."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api.tokens import Scope
from coordinator.clock import FrozenClock
from coordinator.store.tables import audit_log
from coordinator.tracking.deadlines import escalate_overdue
from tests.console import seed
from tests.console.conftest import DOCS_IMAGES
from tests.console.helpers import check_page, sign_in
from tests.console.server import ConsoleServer

Tokens = tuple[Path, dict[Scope, str]]


def test_every_page_signed_in_and_accessible(page: Page, tokens: Tokens, output_dir: Path) -> None:
    page.goto("/ui/sign-in")
    check_page(page, output_dir, "sign-in")
    page.get_by_label("Token").fill("rtk_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    sign_in(page, tokens[1][Scope.WRITE], expect_name="legal-team", expect_scope="write")
    # The chart is drawn by Chart.js from the page's data, beside the same numbers as a table.
    page.wait_for_function(
        "() => Chart.getChart(document.getElementById('backlog-chart')) !== undefined"
    )
    expect(page.locator("#policies tbody tr")).to_have_count(len(seed.BACKLOG))
    # Times show in the browser's zone, with UTC on hover.
    first = page.locator("#policies time").first
    expect(first).to_have_attribute("title", re.compile(r" UTC$"))
    expect(first).to_contain_text(re.compile(r"EST|EDT"))
    expect(page.locator("#drifting-services li")).to_have_count(len(seed.SERVICES) + 1)
    check_page(page, output_dir, "overview", docs=DOCS_IMAGES)

    page.get_by_role("link", name="Runs", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Runs")
    expect(page.get_by_role("link", name=re.compile(r"as JSON"))).to_have_attribute(
        "href", "/v1/runs?limit=100"
    )
    # Sorting by date: oldest first after one press, newest first after two.
    started = page.get_by_role("button", name="Started")
    started.press("Enter")
    values = page.locator("tbody tr td:first-child").evaluate_all(
        "cells => cells.map(c => c.dataset.value)"
    )
    assert values == sorted(values)
    started.press("Enter")
    values = page.locator("tbody tr td:first-child").evaluate_all(
        "cells => cells.map(c => c.dataset.value)"
    )
    assert values == sorted(values, reverse=True)
    check_page(page, output_dir, "runs", docs=DOCS_IMAGES)

    page.locator("tbody tr td:first-child a").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Run")
    expect(page.get_by_text("UndefinedTable (SQLSTATE 42P01)")).to_be_visible()
    check_page(page, output_dir, "run", docs=DOCS_IMAGES)

    page.get_by_role("link", name="Services", exact=True).click()
    # The three seeded services, and `flaky`: declared in the policy file, never registered.
    expect(page.locator("#services-table tbody tr")).to_have_count(len(seed.SERVICES) + 1)
    drift = {
        name: page.locator(f'#services-table tr[data-service="{name}"] td').nth(3)
        for name in (*seed.SERVICES, "flaky")
    }
    expect(drift["flaky"]).to_have_text("not_registered")
    expect(drift["search_index"]).to_have_text("undeclared")
    expect(drift["billing"]).to_have_text("handles_differ")
    check_page(page, output_dir, "services")

    page.get_by_role("link", name="1 failed at notifications").click()
    expect(page.get_by_role("cell", name=f"session:{seed.FAILED}")).to_be_visible()
    # htmx swaps the table when another state is picked; the URL follows.
    page.get_by_role("link", name="completed", exact=True).click()
    expect(page.get_by_role("cell", name=f"session:{seed.COMPLETE}")).to_be_visible()
    expect(page).to_have_url(re.compile(r"state=completed$"))
    expect(page.get_by_role("link", name="completed", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    expect(page.get_by_role("link", name="completed", exact=True)).to_be_focused()
    check_page(page, output_dir, "service")

    page.get_by_role("link", name=f"session:{seed.COMPLETE}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Entity session:{seed.COMPLETE}")
    expect(page.locator("#timeline li")).to_have_count(6)  # purged, published, 3 acks, done
    check_page(page, output_dir, "entity", docs=DOCS_IMAGES)

    page.get_by_role("link", name="Holds", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Legal holds")
    check_page(page, output_dir, "holds", docs=DOCS_IMAGES)

    page.goto("/ui/holds/no-such-hold")
    expect(page.get_by_role("heading", level=1)).to_have_text("404: not found")
    check_page(page, output_dir, "not-found")


def test_hold_created_and_released_through_the_form_is_in_the_audit_chain(
    page: Page, tokens: Tokens, server: ConsoleServer, output_dir: Path, tmp_path: Path
) -> None:
    sign_in(page, tokens[1][Scope.WRITE], expect_name="legal-team", expect_scope="write")
    page.goto("/ui/holds")
    uploaded = tmp_path / "entities.txt"
    uploaded.write_text("session:2001\nsession:2002\n")
    page.get_by_label("Reason (case number, request, …)").fill("Case 2026-114, litigation")
    page.get_by_label("Entities, one type:id per line").fill("session:1002\nsession:1003")
    page.get_by_label("Or a text file of entities, one per line").set_input_files(uploaded)
    page.get_by_label("Hold id (optional; one is made up when empty)").fill("case-2026-114")
    page.get_by_role("button", name="Create hold").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Hold case-2026-114")
    expect(page.locator(".entities li")).to_have_count(4)
    audit = page.locator("#hold-audit tbody tr")
    expect(audit).to_have_count(1)
    expect(audit.first).to_contain_text("hold.create")
    expect(audit.first).to_contain_text("legal-team")
    check_page(page, output_dir, "hold-created", docs=DOCS_IMAGES)

    page.get_by_role("button", name="Release this hold").click()
    expect(audit).to_have_count(2)
    expect(audit.nth(1)).to_contain_text("hold.release")
    expect(audit.nth(1)).to_contain_text("legal-team")
    expect(page.get_by_role("button", name="Release this hold")).to_have_count(0)
    check_page(page, output_dir, "hold-released")

    async def chain(engine: AsyncEngine) -> list[tuple[str, str]]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(audit_log.c.action, audit_log.c.actor)
                .where(audit_log.c.data["hold_id"].astext == "case-2026-114")
                .order_by(audit_log.c.seq)
            )
            return [(row.action, row.actor) for row in rows]

    assert server.call(chain) == [("hold.create", "legal-team"), ("hold.release", "legal-team")]


def test_certificate_download(page: Page, tokens: Tokens, output_dir: Path) -> None:
    sign_in(page, tokens[1][Scope.READ], expect_name="dpo-reader", expect_scope="read")
    page.get_by_label("Entity type").fill("session")
    page.get_by_label("Entity id").fill(seed.COMPLETE)
    page.get_by_role("button", name="Show certificate").click()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the certificate (JSON)").click()
    saved = output_dir / download.value.suggested_filename
    download.value.save_as(saved)
    certificate = json.loads(saved.read_text())
    assert certificate["entity"] == {"type": "session", "id": seed.COMPLETE}
    assert certificate["complete"] is True
    assert {a["service"] for a in certificate["events"][0]["acknowledgements"]} == set(
        seed.SERVICES
    )
    check_page(page, output_dir, "entity-certificate")


def test_read_token_sees_no_write_forms_and_gets_403(
    page: Page, tokens: Tokens, output_dir: Path
) -> None:
    sign_in(page, tokens[1][Scope.READ], expect_name="dpo-reader", expect_scope="read")
    page.goto("/ui/services/notifications?state=failed")
    expect(page.get_by_role("cell", name=f"session:{seed.FAILED}")).to_be_visible()
    expect(page.locator("form#retire-service, form.waive")).to_have_count(0)
    # Posting the admin forms anyway, with the session's own CSRF token: 403 for the scope.
    statuses = page.evaluate(
        """async () => {
            const csrf = document.querySelector("input[name=csrf_token]").value;
            const post = (url) => fetch(url, {method: "POST",
                body: new URLSearchParams({csrf_token: csrf, reason: "x"})});
            return [(await post("/ui/services/notifications/retire")).status,
                    (await post("/ui/services/notifications/events/"
                                + "00000000-0000-0000-0000-000000000000/waive")).status];
        }"""
    )
    assert statuses == [403, 403]
    page.goto("/ui/holds")
    expect(page.locator("form#new-hold")).to_have_count(0)
    expect(page.get_by_role("button", name="Create hold")).to_have_count(0)
    # Posting anyway, with the session's own CSRF token, is refused for the scope.
    status, text = page.evaluate(
        """async () => {
            const csrf = document.querySelector("input[name=csrf_token]").value;
            const body = new URLSearchParams({csrf_token: csrf, reason: "x",
                                              entities: "session:1001"});
            const r = await fetch("/ui/holds", {method: "POST", body});
            return [r.status, await r.text()];
        }"""
    )
    assert status == 403
    assert "dpo-reader" in text
    check_page(page, output_dir, "holds-read-only")


def test_services_overdue_after_the_deadline_passes(
    page: Page, tokens: Tokens, server: ConsoleServer, clock: FrozenClock, output_dir: Path
) -> None:
    sign_in(page, tokens[1][Scope.READ], expect_name="dpo-reader", expect_scope="read")
    page.goto("/ui/services")
    row = page.locator("#services-table tbody tr", has_text="search_index")
    expect(row.locator("td").nth(4)).to_have_text("0")

    clock.advance(seed.DEADLINE + timedelta(hours=1))

    async def tracker_pass(engine: AsyncEngine) -> int:
        async with engine.begin() as conn:
            return len(await escalate_overdue(conn, now=clock.now(), limit=100))

    assert server.call(tracker_pass) == 2  # the partly and the not confirmed events
    page.reload()
    expect(row).to_have_class("late")
    expect(row.locator("td").nth(4)).to_have_text("2")
    check_page(page, output_dir, "services-overdue", docs=DOCS_IMAGES)

    page.goto("/ui/")
    late = page.locator("#late-services-table tbody tr", has_text="search_index")
    expect(late).to_have_class("late")
    page.get_by_role("link", name="search_index").first.click()
    expect(page.get_by_role("cell", name=f"session:{seed.PARTIAL}")).to_be_visible()
    expect(page.get_by_role("cell", name=f"session:{seed.FAILED}")).to_be_visible()
    check_page(page, output_dir, "service-overdue")


def test_erasure_request_filed_through_the_form_completes_as_services_ack(
    page: Page, tokens: Tokens, server: ConsoleServer, clock: FrozenClock, output_dir: Path
) -> None:
    sign_in(page, tokens[1][Scope.WRITE], expect_name="legal-team", expect_scope="write")
    page.get_by_role("link", name="Erasure requests", exact=True).click()
    page.get_by_label("Data subject, as type:id").fill("user:user-00000")
    page.get_by_label("Regulation").select_option("gdpr")
    page.get_by_label(re.compile(r"^Your reference")).fill("DSR-2026-0042")
    page.get_by_role("button", name="File request").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Erasure request user:user-00000")
    expect(page.locator("dl.facts")).to_contain_text("legal-team")
    request_id = uuid.UUID(page.url.rstrip("/").rpartition("/")[2])
    check_page(page, output_dir, "erasure-request-filed")

    page.get_by_label("Reason").fill("Identity check by post, Art. 12(3)")
    page.get_by_role("button", name="Extend").click()
    expect(page.locator("dl.facts")).to_contain_text("(extended: Identity check by post")

    server.call(lambda engine: seed.publish_request(engine, request_id, clock.now()))
    page.reload()
    services = page.locator("#request-services tbody tr")
    expect(services).to_have_count(len(seed.SERVICES))
    expect(services.first).to_contain_text("pending")
    check_page(page, output_dir, "erasure-request-published")

    acked = server.call(lambda engine: seed.acknowledge_request(engine, request_id, clock.now()))
    assert acked >= len(seed.SERVICES)
    page.reload()
    expect(services.first).to_contain_text("completed")
    expect(page.locator("dl.facts .badge").first).to_have_text("completed")
    check_page(page, output_dir, "erasure-request", docs=DOCS_IMAGES)

    page.get_by_role("link", name="Erasure requests", exact=True).click()
    expect(page.get_by_role("link", name="user:user-00000")).to_be_visible()
    page.get_by_label("Status").select_option("completed")
    expect(page).to_have_url(re.compile(r"status=completed"))
    expect(page.get_by_role("link", name="user:user-00000")).to_be_visible()
    check_page(page, output_dir, "erasure-requests", docs=DOCS_IMAGES)

    page.goto(f"/ui/erasure-requests/{request_id}")
    page.get_by_role("link", name="HTML").click()
    expect(page.locator("body")).to_contain_text("user:user-00000")
    page.screenshot(path=str(output_dir / "erasure-certificate.png"), full_page=True)


def test_admin_waives_an_ack_through_the_form_and_it_is_audited(
    page: Page, tokens: Tokens, server: ConsoleServer, output_dir: Path
) -> None:
    sign_in(page, tokens[1][Scope.ADMIN], expect_name="privacy-admin", expect_scope="admin")
    page.goto("/ui/services/search_index?state=pending")
    page.get_by_role("link", name="overdue", exact=True).click()
    expect(page).to_have_url(re.compile(r"state=overdue"))
    expect(page.locator("form#retire-service")).to_have_count(1)
    label = f"Reason to waive session:{seed.PARTIAL}"
    # The reason is required: the browser refuses an empty one before it is sent.
    page.get_by_label(label).press("Enter")
    expect(page).to_have_url(re.compile(r"state=overdue"))
    page.get_by_label(label).fill("Index rebuilt from scratch on 2026-03-02, DPO ticket 88")
    page.get_by_label(label).press("Enter")

    expect(page).to_have_url(re.compile(r"/ui/services/search_index\?state=waived$"))
    waived = page.locator("#service-events tbody tr", has_text=f"session:{seed.PARTIAL}")
    expect(waived.locator(".badge")).to_have_text("waived")
    expect(waived.get_by_test_id("waived-by")).to_have_text("privacy-admin")
    check_page(page, output_dir, "service-waived", docs=DOCS_IMAGES)

    page.get_by_role("link", name=f"session:{seed.PARTIAL}").click()
    answer = page.get_by_role("row", name=re.compile(r"^search_index waived"))
    expect(answer).to_be_visible()
    check_page(page, output_dir, "entity-waived")

    page.goto("/ui/services")
    row = page.locator('#services-table tr[data-service="search_index"]')
    expect(row.locator("td").nth(9)).to_have_text("1")  # Waived (after Held, Completed)

    async def chain(engine: AsyncEngine) -> list[tuple[str, str, str]]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(audit_log.c.action, audit_log.c.actor, audit_log.c.data["reason"].astext)
                .where(audit_log.c.action == "ack_waived")
                .order_by(audit_log.c.seq)
            )
            return [(row.action, row.actor, row[2]) for row in rows]

    assert server.call(chain) == [
        ("ack_waived", "privacy-admin", "Index rebuilt from scratch on 2026-03-02, DPO ticket 88")
    ]
