"""Running the coordinator as an operator does, as processes a scenario can kill.

`retention run` and `retention relay --drain` run as subprocesses on the stack's
coordinator database (small relay batches, so a kill lands between publish and mark);
the services run as in the e2e harness, the tracker in-process. A scenario that runs
`retention serve` instead gets its environment from `serve_env`, and `serve_policies`
makes the world's policy file one `serve` can run (every policy on the global schedule,
the product services declared).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping

import yaml
from sqlalchemy import Select, func, select, text

from coordinator.outbox.lookup import EVENTS
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log
from tests import declared
from tests.e2e.harness import PRODUCT_SERVICES, ServiceProcess, Stack, has_registered, wait_for
from tests.faults.invariants import SERVICE_LOGS
from tests.faults.world import HASH_SECRET, World
from tests.infra import active_containers, with_database

__all__ = [
    "RUN_TIMEOUT_S",
    "audit_entries",
    "complete",
    "coordinator_processes",
    "count",
    "effects_applied",
    "infra",
    "published_events",
    "serve_env",
    "serve_policies",
    "start_services",
    "terminate_connections",
    "wait_until_above",
]

RUN_TIMEOUT_S = 120.0

COORDINATOR_ENV = {
    "RETENTION_HASH_SECRET": HASH_SECRET,
    "RETENTION_RELAY_BATCH_SIZE": "3",
    "RETENTION_LOG_LEVEL": "INFO",
}


def coordinator_processes(
    stack: Stack, world: World, *, suffix: str = "", env: Mapping[str, str] | None = None
) -> tuple[ServiceProcess, ServiceProcess]:
    """(`retention run`, `retention relay --drain`), added to the stack, not started."""
    extra = {**COORDINATOR_ENV, **(env or {})}
    run = stack.add_cli(
        f"run{suffix}", "run", "--policies", str(world.policy_file), "--json", env=extra
    )
    relay = stack.add_cli(f"relay{suffix}", "relay", "--drain", "--json", env=extra)
    return run, relay


def serve_env(stack: Stack, world: World, *, schedule: str) -> dict[str, str]:
    """`retention serve` on the stack: policies run on `schedule` (cron with seconds), short
    ticks and polls, its tracker in a consumer group of the stack's own."""
    prefix = stack.kafka.topic_prefix
    return {
        **COORDINATOR_ENV,
        "RETENTION_POLICIES": str(world.policy_file),
        "RETENTION_SCHEDULE": schedule,
        "RETENTION_SERVE_TICK_S": "0.2",
        "RETENTION_SERVE_MISFIRE_GRACE_S": "1",
        "RETENTION_SERVE_GAUGES_INTERVAL_S": "0.5",
        "RETENTION_SERVE_SHUTDOWN_TIMEOUT_S": "20",
        "RETENTION_TRACKER_GROUP_ID": f"{prefix}.tracker",
        "RETENTION_TRACKER_POLL_INTERVAL_S": "0.2",
        "RETENTION_RELAY_IDLE_SLEEP_S": "0.1",
        "RETENTION_RELAY_BACKOFF_MAX_S": "2",
    }


def serve_policies(world: World) -> None:
    """Every policy on the global schedule, so each scheduled run covers all of them;
    `serve` expects the three product services, each declared with its own key (SPEC §9)."""
    document = yaml.safe_load(world.policy_file.read_text())
    for policy in document["policies"]:
        policy.pop("schedule", None)
    # Only the services this scenario runs are declared: a declared service that never runs
    # would leave its events pending. A fan_out policy none of them handles fans out no more.
    document["services"] = declared.services_block(PRODUCT_SERVICES)
    handled = {
        (entity_type, action)
        for service in document["services"]
        for entity_type, actions in service["handles"].items()
        for action in actions
    }
    for policy in document["policies"]:
        event_type = "anonymize" if policy["action"] == "anonymize" else "delete"
        if policy.get("fan_out") and (policy["entity_type"], event_type) not in handled:
            policy["fan_out"] = False
            world.policies[policy["name"]] = dataclasses.replace(
                world.policies[policy["name"]], fan_out=False
            )
    world.policy_file.write_text(yaml.safe_dump(document, sort_keys=False))


async def complete(process: ServiceProcess, *, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Start the one-shot command and require a clean exit."""
    process.start()
    code = await process.wait(timeout_s=timeout_s)
    assert code == 0, f"{process.name} exited {code}:\n{process.log_tail()}"


async def start_services(stack: Stack) -> None:
    """The three example services, ready and registered with the tracker."""
    await stack.start_services(*PRODUCT_SERVICES)
    await wait_for(
        lambda: has_registered(stack, PRODUCT_SERVICES),
        timeout_s=30,
        what="the three registrations",
    )


async def count(stack: Stack, query: Select[tuple[int]]) -> int:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(query) or 0)
    finally:
        await engine.dispose()


def audit_entries(action: str) -> Select[tuple[int]]:
    return select(func.count()).select_from(audit_log).where(audit_log.c.action == action)


def published_events() -> Select[tuple[int]]:
    return select(func.count()).select_from(EVENTS).where(EVENTS.c.published_at.is_not(None))


async def effects_applied(stack: Stack, service: str) -> int:
    """How many effects `service` has applied so far (its erasure_log rows)."""
    engine = make_engine(stack.services_url)
    try:
        async with engine.connect() as conn:
            table = SERVICE_LOGS[service][0]
            return int(await conn.scalar(select(func.count()).select_from(table)) or 0)
    finally:
        await engine.dispose()


async def wait_until_above(
    read: Callable[[], Awaitable[int]],
    floor: int,
    *,
    process: ServiceProcess,
    timeout_s: float = 60.0,
    interval_s: float = 0.01,
) -> int | None:
    """Poll `read` until it passes `floor`; None if `process` ended first."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if value > floor:
            return value
        if not process.alive:
            return None
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.name}: no progress past {floor} in {timeout_s}s")
        await asyncio.sleep(interval_s)


async def terminate_connections(*urls: str) -> int:
    """`pg_terminate_backend` every connection to these databases (ours only); how many."""
    names = [url.rpartition("/")[2] for url in urls]
    admin = make_engine(with_database(urls[0], "postgres"))
    try:
        async with admin.connect() as conn:
            ended = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    # Client connections only: an autovacuum worker is a superuser's.
                    "WHERE datname = ANY(:names) AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                ),
                {"names": names},
            )
            return sum(1 for (ok,) in ended if ok)
    finally:
        await admin.dispose()


async def infra(*command: str) -> None:
    """`kafka-stop [--kill]` / `kafka-start` on the session's Kafka container (containers
    mode: `docker kill`, `docker stop`, `docker start`).

    The local broker is shared with every other test and checkout and is never stopped:
    local scenarios stop a broker of their own (tests/faults/private_kafka.py).
    """
    containers = active_containers()
    if containers is None:
        raise RuntimeError("only the containers mode's own Kafka container may be stopped")
    await asyncio.to_thread(containers.kafka_command, *command)
