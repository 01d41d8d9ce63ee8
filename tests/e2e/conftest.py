"""Each end-to-end test gets a `Stack` of its own: topics, two databases, service logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import Stack, isolated_stack


@pytest.fixture
async def stack(
    postgres_url: str, kafka_bootstrap: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Stack]:
    # Service logs stay in tmp_path (pytest keeps the last runs) for a failed test's autopsy.
    async with isolated_stack(postgres_url, kafka_bootstrap, request.node.name, tmp_path) as s:
        yield s
