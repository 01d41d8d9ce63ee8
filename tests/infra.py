"""Test access to the real Kafka broker and PostgreSQL server.

Where they come from is RETENTION_TEST_INFRA:
- `local`: the ones `make infra-up` (infra/infra.sh) started or found, whose settings it
  wrote to .cache/infra.env (the environment's own RETENTION_* settings win);
- `containers`: a Kafka and a PostgreSQL container of our images, started for the session
  through testcontainers on free ports and removed at its end (tests/containers.py);
- `auto` (the default): containers when a Docker engine answers, our images exist and the
  environment names no broker or database of its own; `local` otherwise.

A missing broker or server is a test failure with a message saying how to start it,
never a skip: tests that prove the product must not pass by not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from schemas import DEFAULT_DATABASE_URL, KafkaSettings

if TYPE_CHECKING:
    from tests.containers import ContainerInfra

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / ".cache" / "infra.env"
MODE_VARIABLE = "RETENTION_TEST_INFRA"
NAMED_BY_ENVIRONMENT = (
    "RETENTION_KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_BOOTSTRAP_SERVERS",
    "RETENTION_DATABASE_URL",
    "DATABASE_URL",
)
Mode = Literal["containers", "local"]

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


def infra_mode() -> Mode:
    """RETENTION_TEST_INFRA resolved; `containers` when asked for but impossible is an error."""
    asked = os.environ.get(MODE_VARIABLE, "auto")
    if asked not in ("containers", "local", "auto"):
        raise RuntimeError(f"{MODE_VARIABLE}={asked!r}: use containers, local or auto")
    if asked == "local":
        return "local"
    # Imported only here: the local mode needs neither docker-py nor testcontainers.
    from tests.containers import engine_problem

    if asked == "auto":
        if any(os.environ.get(name) for name in NAMED_BY_ENVIRONMENT):
            return "local"
        return "local" if engine_problem() else "containers"
    problem = engine_problem()
    if problem:
        raise RuntimeError(f"{MODE_VARIABLE}=containers, but {problem}")
    return "containers"


_CONTAINERS: list[ContainerInfra] = []


def start_infra() -> list[str]:
    """Make this session's broker and database settings the environment's; what was used.

    In containers mode the containers start here, before any test module is imported, and
    their settings replace any in the environment: subprocesses the tests start inherit them.
    """
    mode = infra_mode()
    if mode == "local":
        load_infra_env()
        return [f"infra: local ({ENV_FILE.name} or the environment; `make infra-up`)"]
    from tests.containers import ContainerInfra

    infra = ContainerInfra.start()
    _CONTAINERS.append(infra)
    for name in NAMED_BY_ENVIRONMENT:
        os.environ.pop(name, None)
    os.environ["RETENTION_KAFKA_BOOTSTRAP_SERVERS"] = infra.bootstrap_servers
    os.environ["RETENTION_DATABASE_URL"] = infra.database_url
    asyncio.run(_provision(infra.database_url))
    return ["infra: containers (testcontainers)", *infra.lines]


async def _provision(url: str) -> None:
    """The databases infra/infra.sh creates, and proof that both servers answer."""
    from tests.containers import DATABASES

    await check_postgres(url)
    await check_kafka(KafkaSettings())
    conn = await asyncpg.connect(_asyncpg_dsn(with_database(url, "postgres")))
    try:
        existing = {r["datname"] for r in await conn.fetch("select datname from pg_database")}
        for name in DATABASES:
            if name not in existing:
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def active_containers() -> ContainerInfra | None:
    """The session's containers in containers mode, else None."""
    return _CONTAINERS[0] if _CONTAINERS else None


def stop_infra() -> list[str]:
    """Remove the session's containers, if any; what was removed."""
    removed: list[str] = []
    while _CONTAINERS:
        removed += _CONTAINERS.pop().remove()
    return removed


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
    """Return once a new client's metadata lists all the topics of `kafka`."""
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


async def lock_waiters(
    url: str, *, database: str | None = None, application_name: str | None = None
) -> int:
    """How many sessions wait for a lock (advisory ones too) in `database`, or named
    `application_name`, as the server at `url` sees them now."""
    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND ($1::text IS NULL OR datname = $1)"
                " AND ($2::text IS NULL OR application_name = $2)",
                database,
                application_name,
            )
        )
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


PREFIXES_MADE: list[str] = []
"""Every prefix `unique_topic_prefix` handed out and not deleted yet, in order:
tests/conftest.py deletes the topics of those a test made once it ends, and the rest
(module and session fixtures') once the session's fixtures are torn down."""


def unique_topic_prefix(label: str = "t") -> str:
    prefix = f"test.{re.sub(r'[^a-zA-Z0-9]', '', label)[:20]}.{uuid.uuid4().hex[:8]}.data.retention"
    PREFIXES_MADE.append(prefix)
    return prefix


def delete_topics_made(bootstrap: str) -> None:
    """Delete the topics of every prefix in `PREFIXES_MADE`, in one request, and forget
    them; best effort, as `delete_topics_of`."""
    made = PREFIXES_MADE[:]
    PREFIXES_MADE.clear()
    if made:
        delete_topics_of(bootstrap, made)


def delete_topics_of(bootstrap: str, prefixes: Sequence[str], *, timeout_s: float = 15.0) -> None:
    """Delete the broker's topics named under `prefixes`; best effort, never raises.

    Every test makes topics of its own and a broker holds each partition's files open: a
    shared broker that keeps them all runs out of file descriptors (20,000 here) after a few
    suites, and then shuts down. A broker that is down (a fault scenario's) is left alone.
    """

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(tuple(prefixes))]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    def run() -> None:
        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(delete(), timeout_s))

    # Its own thread and loop: this runs at a test's teardown, maybe inside a running loop.
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s + 5)
