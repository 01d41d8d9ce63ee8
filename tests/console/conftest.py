"""A real Chromium (Debian's, never a downloaded build) on the console, one per session.

`make test` installs Debian's `chromium` when it is missing (`make browser`); without it the
tests fail saying so, they are never skipped.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from coordinator.api.tokens import Scope, add_token, new_token
from coordinator.clock import FrozenClock
from coordinator.store.migrate import upgrade
from tests import infra
from tests.api.conftest import SEED_POLICIES
from tests.console import seed
from tests.console.server import ConsoleServer
from tests.infra import ROOT

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
OUTPUT = ROOT / ".cache" / "test-output" / "console"
DOCS_IMAGES = ROOT / "docs" / "images" / "console"
# Local times in the screenshots are New York's: visibly not UTC, and the same on every machine.
TIME_ZONE = "America/New_York"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Debian's chromium is not installed: `make browser` (or `make test`) installs it"
        )
    return found


@pytest.fixture(scope="module")
def console_db(postgres_url: str) -> Iterator[str]:
    """A migrated database of the browser tests' own, made before the browser starts:
    asyncio.run cannot run while Playwright's sync API keeps its loop in this thread."""
    url = asyncio.run(infra.create_database(postgres_url, "console"))
    asyncio.run(upgrade(url))
    yield url
    asyncio.run(infra.drop_database(url))


@pytest.fixture(scope="module")
def browser(server: ConsoleServer) -> Iterator[Browser]:
    """One Chromium for all the browser tests (they live in one module). Module-scoped, not
    session-scoped: Playwright's loop must be gone before later modules' asyncio fixtures."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(),
            # Tests may run as root, where Chromium's sandbox cannot start.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Scope, str]]:
    path = tmp_path_factory.mktemp("console") / "tokens.yaml"
    made = {}
    for name, scope in (
        ("dpo-reader", Scope.READ),
        ("legal-team", Scope.WRITE),
        ("privacy-admin", Scope.ADMIN),
    ):
        created = new_token(name, scope)
        add_token(path, created.entry)
        made[scope] = created.token
    return path, made


@pytest.fixture(scope="module")
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture(scope="module")
def server(
    console_db: str, tokens: tuple[Path, dict[Scope, str]], clock: FrozenClock
) -> Iterator[ConsoleServer]:
    running = ConsoleServer(console_db, tokens[0], SEED_POLICIES, clock).start()
    try:
        running.call(lambda engine: seed.seed(engine, clock.now(), SEED_POLICIES))
        yield running
    finally:
        running.stop()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """The test's output folder: its screenshots land here."""
    folder = OUTPUT / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def context(server: ConsoleServer, browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) on the server; CSP bypassed only so the test
    can inject axe-core, which the console's own policy would rightly refuse."""
    made = browser.new_context(
        base_url=server.url,
        bypass_csp=True,
        timezone_id=TIME_ZONE,
        locale="en-US",
        viewport={"width": 1280, "height": 900},
        accept_downloads=True,
    )
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
