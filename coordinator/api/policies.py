"""The loaded policies, each with its schedule and latest results."""

from __future__ import annotations

from fastapi import APIRouter

from coordinator.api._context import Connection, Context
from coordinator.api.models import PolicyResultView, PolicyView
from coordinator.purge import run_log

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["policies"])


@router.get("/policies", response_model=list[PolicyView])
async def list_policies(ctx: Context, conn: Connection) -> list[PolicyView]:
    """Every policy of the file `serve` loaded, in file order."""
    results = await run_log.last_results(conn)
    successes = await run_log.last_successes(conn)
    backups = ctx.backups
    expire_by = backups.backups_expire_by(ctx.clock.now())
    retention = backups.settings_view()["backup_retention"]
    views = []
    for policy in ctx.policy_set.policies:
        last = results.get(policy.name)
        views.append(
            PolicyView(
                name=policy.name,
                definition=policy,
                schedule=policy.schedule or ctx.global_schedule,
                last_result=PolicyResultView.model_validate(last) if last else None,
                last_success_at=successes.get(policy.name),
                backup_retention=retention,
                backups_expire_by=expire_by,
            )
        )
    return views
