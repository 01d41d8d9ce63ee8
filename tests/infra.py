"""Test access to the real Kafka broker and PostgreSQL server that `make infra-up` starts.

A missing broker or server is a test failure with a message saying how to start it,
never a skip: tests that prove the product must not pass by not running.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from schemas import DEFAULT_DATABASE_URL, KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / ".cache" / "infra.env"

HOW_TO_START = (
    "start it with `make infra-up` (or set RETENTION_KAFKA_BOOTSTRAP_SERVERS / "
    "RETENTION_DATABASE_URL to a running one)"
)


def load_infra_env() -> None:
    """Read the settings `infra/infra.sh up` wrote, unless the environment already has them."""
    if not ENV_FILE.exists():
        return
    for line in ENV_FILE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            os.environ.setdefault(key.strip(), value.strip())


SIGNING_VARIABLES = (
    "RETENTION_SIGNATURES",
    "RETENTION_SIGNING_KEY_FILE",
    "RETENTION_COORDINATOR_PUBLIC_KEYS",
    "RETENTION_SERVICE_SIGNING_KEY_FILE",
)


def use_test_keys() -> None:
    """Write the test keys (tests/keys.py) under .cache/ and point the signing variables of
    this process at them: the coordinator's key and the one every test service signs with."""
    from tests import keys

    paths = keys.write_key_files(ROOT / ".cache" / "test-keys", keys.COORDINATOR, keys.SERVICE)
    os.environ["RETENTION_SIGNING_KEY_FILE"] = str(paths[keys.COORDINATOR])
    os.environ["RETENTION_COORDINATOR_PUBLIC_KEYS"] = keys.public_key(keys.COORDINATOR)
    os.environ["RETENTION_SERVICE_SIGNING_KEY_FILE"] = str(paths[keys.SERVICE])


def signing_env() -> dict[str, str]:
    """The signing variables of this process, for a subprocess's environment."""
    return {k: os.environ[k] for k in SIGNING_VARIABLES if k in os.environ}


def database_url() -> str:
    return os.environ.get("RETENTION_DATABASE_URL") or os.environ.get(
        "DATABASE_URL", DEFAULT_DATABASE_URL
    )


def _asyncpg_dsn(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+asyncpg)?://", "postgresql://", url)


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def check_kafka(kafka: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await asyncio.wait_for(admin.start(), timeout=15)
        await asyncio.wait_for(admin.list_topics(), timeout=15)
    except Exception as exc:
        raise RuntimeError(
            f"Kafka is not reachable at {kafka.bootstrap_servers} ({exc!r}): {HOW_TO_START}"
        ) from exc
    finally:
        await admin.close()


async def wait_for_topics(kafka: KafkaSettings, *, timeout_s: float = 30) -> None:
    """Return once a new client's metadata lists all four topics of `kafka`."""
    wanted = set(kafka.topics.all())
    async with asyncio.timeout(timeout_s):
        while True:
            admin = AIOKafkaAdminClient(**kafka.client_kwargs())
            try:
                await admin.start()
                if wanted <= set(await admin.list_topics()):
                    return
            finally:
                await admin.close()
            await asyncio.sleep(0.2)


async def check_postgres(url: str) -> str:
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    except Exception as exc:
        raise RuntimeError(f"PostgreSQL is not reachable ({exc!r}): {HOW_TO_START}") from exc
    try:
        return str(await conn.fetchval("show server_version"))
    finally:
        await conn.close()


async def create_database(url: str, prefix: str) -> str:
    """Create a fresh, uniquely named database; return its URL."""
    name = f"{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:40]}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(_asyncpg_dsn(with_database(url, "postgres")))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, *, attempts: int = 20) -> None:
    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(_asyncpg_dsn(with_database(url, "postgres")))
    try:
        for attempt in range(attempts):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except asyncpg.InsufficientPrivilegeError:
                # FORCE cannot end a superuser's backend: an autovacuum worker that bulk
                # writes woke (on a million rows it runs for many seconds). A plain DROP
                # cancels autovacuum workers itself; it only fails while clients remain.
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    return
                except asyncpg.ObjectInUseError:
                    if attempt == attempts - 1:
                        raise
                await asyncio.sleep(0.25)
    finally:
        await conn.close()


def unique_topic_prefix(label: str = "t") -> str:
    return f"test.{re.sub(r'[^a-zA-Z0-9]', '', label)[:20]}.{uuid.uuid4().hex[:8]}.data.retention"
