"""Fixtures for the real broker and database; see tests/infra.py."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from coordinator.copies.crypto.provider import write_kek
from coordinator.kafka.admin import ensure_topics
from coordinator.store.migrate import upgrade
from schemas import KafkaSettings
from tests import infra

# Everything under test signs and verifies (RETENTION_SIGNATURES defaults to required) with
# the test keys; subprocesses get the same variables through the harnesses.
infra.use_test_keys()

_STARTED: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module is imported: settings read at import see the session's infra.
    try:
        _STARTED.extend(infra.start_infra())
    except Exception:
        infra.stop_infra()
        raise
    # Archive policies seal rows under a KEK: one for the session, unless one is given.
    if "RETENTION_KEK_FILE" not in os.environ:
        folder = Path(tempfile.mkdtemp(prefix="retention-kek-"))
        write_kek(folder / "kek.hex")
        os.environ["RETENTION_KEK_FILE"] = str(folder / "kek.hex")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _STARTED


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Session fixtures are torn down by now: their topics, and module fixtures', go in one
    # batch (each test's own went at its end), before a broker this session started stops.
    # The terminal still shows what is written here.
    if infra.PREFIXES_MADE:
        # Best effort like the deletion itself: settings a run's environment spoils must
        # not turn a green session red here, nor skip the hooks after this one.
        with suppress(Exception):
            infra.delete_topics_made(KafkaSettings().bootstrap_servers)
    removed = infra.stop_infra()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in removed:
        if reporter is not None:
            reporter.write_line(f"infra: {line}")


def pytest_unconfigure(config: pytest.Config) -> None:
    infra.stop_infra()


@pytest.fixture(autouse=True)
def _delete_test_topics() -> Iterator[None]:
    """After each test, the topics of the prefixes it made (not those of module or session
    fixtures, made before it started) are deleted from the shared broker."""
    made_before = len(infra.PREFIXES_MADE)
    yield
    made = infra.PREFIXES_MADE[made_before:]
    del infra.PREFIXES_MADE[made_before:]
    if made:
        infra.delete_topics_of(KafkaSettings().bootstrap_servers, made)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's address, after proving it answers (fails loudly otherwise)."""
    kafka = KafkaSettings()
    try:
        asyncio.run(infra.check_kafka(kafka))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return kafka.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The server's URL, after proving it answers (fails loudly otherwise)."""
    url = infra.database_url()
    try:
        asyncio.run(infra.check_postgres(url))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return url


@pytest.fixture(scope="module")
def fresh_database(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database of the module's own, dropped afterwards."""
    url = asyncio.run(
        infra.create_database(postgres_url, request.module.__name__.rpartition(".")[2])
    )
    yield url
    asyncio.run(infra.drop_database(url))


@pytest.fixture(scope="module")
def coordinator_db(fresh_database: str) -> str:
    """A fresh database migrated to the coordinator's latest schema."""
    asyncio.run(upgrade(fresh_database))
    return fresh_database


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, request: pytest.FixtureRequest) -> KafkaSettings:
    """Settings with a topic prefix of the test's own, so tests never see each other's records."""
    return KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=infra.unique_topic_prefix(request.node.name),
    )


@pytest.fixture
async def topics(kafka_settings: KafkaSettings) -> KafkaSettings:
    """`kafka_settings` with its topics created (3 partitions; the audit topic 1), visible."""
    await ensure_topics(kafka_settings, partitions=3)
    # CreateTopics returns once the controller committed them; a fresh client's metadata
    # request may still miss them for a moment, which would flake checks such as /healthz.
    await infra.wait_for_topics(kafka_settings)
    return kafka_settings
