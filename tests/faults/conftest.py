"""Fault scenarios: a `Stack` and a seeded `World` per test; report and totals lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import Stack, isolated_stack
from tests.faults.invariants import REPORTS, totals_line
from tests.faults.world import World, prepare_world


@pytest.fixture
async def stack(
    postgres_url: str, kafka_bootstrap: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Stack]:
    # Process logs stay in tmp_path (pytest keeps the last runs) for a failed test's autopsy.
    async with isolated_stack(postgres_url, kafka_bootstrap, request.node.name, tmp_path) as s:
        yield s


@pytest.fixture
async def world(stack: Stack, tmp_path: Path) -> World:
    return await prepare_world(stack, tmp_path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("fault scenarios")
    for report in REPORTS:
        terminalreporter.write_line(report.line())
    terminalreporter.write_line(totals_line(REPORTS))
