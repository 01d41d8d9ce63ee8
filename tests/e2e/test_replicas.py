"""Issue 16's "the tracker runs on every serve replica as one consumer group": two
`retention serve` processes share the acks topic's partitions, each records a share of
the acks, and every event still completes with each effect applied exactly once."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import httpx
import yaml

from services import EXAMPLES
from tests import declared
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    ServiceProcess,
    Stack,
    erasure_counts,
    has_registered,
    stable_members,
    states_are,
    wait_for,
)
from tests.faults.private_postgres import free_port
from tests.outbox import insert_rows, outbox_rows

USERS = 120
ACKS = re.compile(r'^retention_acks_total\{service="[^"]+",status="completed"\} (\S+)$', re.M)


def _policy_file(directory: Path) -> Path:
    """One fan-out policy on a table of the coordinator's database, and the product
    services, each declared with its own key."""
    document = {
        "policies": [
            {
                "name": "inactive_users",
                "table": "replica_users",
                "entity_type": "user",
                "timestamp_column": "last_seen",
                "retention": "365d",
                "action": "delete",
                "legal_basis": "test",
                "fan_out": True,
            }
        ],
        "services": declared.services_block(PRODUCT_SERVICES),
    }
    path = directory / "replicas.policies.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def _acks_recorded(port: int) -> int:
    """The completed acks one replica's tracker recorded (its /metrics)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return int(sum(float(n) for n in ACKS.findall(response.text)))


async def test_two_serve_replicas_split_the_acks_and_complete_every_event(stack: Stack) -> None:
    engine = stack.engine()
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TABLE replica_users (id text PRIMARY KEY, last_seen timestamptz)"
            )
    finally:
        await engine.dispose()
    users = [f"replica-u{i:04d}" for i in range(USERS)]
    for example in EXAMPLES:
        if example.name in PRODUCT_SERVICES:
            await example.seed(stack.services_url, users)
    await stack.start_services(*PRODUCT_SERVICES)
    policies = _policy_file(stack.log_dir)
    ports = [free_port(), free_port()]
    replicas: list[ServiceProcess] = [
        stack.add_serve(f"serve-{n}", policies, port=port, env={"RETENTION_SCHEDULE": "0 0 29 2 *"})
        for n, port in enumerate(ports, start=1)
    ]
    for replica in replicas:
        replica.start()

    def alive() -> None:
        stack.check_alive()
        for replica in replicas:
            replica.check_alive()

    await wait_for(
        partial(has_registered, stack, PRODUCT_SERVICES), timeout_s=60, what="registrations"
    )

    async def both_members() -> bool:
        return await stable_members(stack.kafka, stack.tracker_group) == 2

    await wait_for(both_members, timeout_s=60, what="two trackers in one group", alive=alive)
    # Published only now, so every ack is read by a group of two.
    engine = stack.engine()
    try:
        await insert_rows(engine, outbox_rows(USERS, policy="inactive_users", entity_ids=users))
    finally:
        await engine.dispose()
    await wait_for(
        partial(states_are, stack, completed=USERS),
        timeout_s=120,
        what="every event completed",
        alive=alive,
    )

    recorded = [await _acks_recorded(port) for port in ports]
    # Acks are keyed by event id: each replica's partitions carry a share of them, and
    # no ack was recorded twice (a counter counts only what entered the ledger).
    assert all(n > 0 for n in recorded), recorded
    assert sum(recorded) == USERS * len(PRODUCT_SERVICES), recorded
    counts = await erasure_counts(stack.services_url)
    for service in PRODUCT_SERVICES:
        assert set(counts[service].values()) == {1}, service
        assert len(counts[service]) == USERS, service
