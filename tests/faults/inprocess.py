"""The run in-process (an injected clock, a progress callback), then the usual delivery.

Scenarios 8 and 9 need what a `retention run` process cannot offer: a pause between
two batches, a clock that is wrong. `run_policies` runs the world's policy file with
`coordinator.purge.runner.Runner`; `deliver` publishes with `retention relay --drain`, lets
the three services and the tracker finish, and waits until everything settled.
"""

from __future__ import annotations

from coordinator.clock import Clock
from coordinator.policy.model import load_policies
from coordinator.purge.runner import Progress, Runner, RunReport
from coordinator.settings import Settings
from tests.e2e.harness import Stack, all_of, running_tracker
from tests.faults.drive import complete, coordinator_processes, start_services
from tests.faults.invariants import settle
from tests.faults.world import HASH_SECRET, World, row_checksums

__all__ = ["deliver", "row_digests", "run_policies"]


async def run_policies(
    stack: Stack, world: World, *, clock: Clock | None = None, progress: Progress | None = None
) -> RunReport:
    engine = stack.engine()
    try:
        settings = Settings(database_url=stack.coordinator_url, hash_secret=HASH_SECRET)
        runner = Runner(engine, load_policies(world.policy_file), settings, clock=clock)
        return await runner.run(progress=progress, trigger="faults")
    finally:
        await engine.dispose()


async def deliver(stack: Stack, world: World, *, timeout_s: float = 120.0) -> None:
    """Publish what the runs wrote and wait until every event settled at the tracker."""
    _, relay = coordinator_processes(stack, world, suffix="-deliver")
    async with running_tracker(stack) as tracker:
        await start_services(stack)
        await complete(relay)
        await settle(
            stack, world, timeout_s=timeout_s, alive=all_of(stack.check_alive, tracker.check)
        )
    await stack.stop_services()


async def row_digests(stack: Stack, world: World, policy: str, ids: set[str]) -> dict[str, str]:
    """md5 of each row's text by entity id, as the invariant check records them."""
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            return await row_checksums(conn, world, policy, ids)
    finally:
        await engine.dispose()
