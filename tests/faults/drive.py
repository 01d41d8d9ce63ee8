"""Running the coordinator as an operator does, as processes a scenario can kill.

`retention run` and `retention relay --drain` run as subprocesses on the stack's
coordinator database (small relay batches, so a kill lands between publish and mark);
the services run as in the e2e harness, the tracker in-process.
"""

from __future__ import annotations

from collections.abc import Mapping

from tests.e2e.harness import PRODUCT_SERVICES, ServiceProcess, Stack, has_registered, wait_for
from tests.faults.world import HASH_SECRET, World

__all__ = ["RUN_TIMEOUT_S", "complete", "coordinator_processes", "start_services"]

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
