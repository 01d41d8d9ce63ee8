"""`/healthz` (database and Kafka, each bounded by a short timeout) and `/metrics`.

Both are open without a token (SPEC §10): neither reveals entity ids, hold reasons or
error texts. Metric labels are names of policies, services, actions, statuses and
rejection reasons, never entity ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator.api._context import Context
from coordinator.api.health import check_database, check_tracker
from coordinator.api.models import HealthCheck, HealthView

__all__ = ["router"]

router = APIRouter(tags=["operations"])


async def _timed(check: Awaitable[None], timeout_s: float) -> HealthCheck:
    started = time.monotonic()
    detail = ""
    try:
        async with asyncio.timeout(timeout_s):
            await check
    except TimeoutError:
        detail = f"no answer within {timeout_s:g}s"
    except LookupError as exc:
        detail = str(exc)  # our own text: the missing topics' or types' names
    except Exception as exc:
        # Open to anyone: the class says what kind of failure, never the message.
        detail = f"unavailable ({type(exc).__name__})"
    return HealthCheck(ok=not detail, detail=detail, seconds=round(time.monotonic() - started, 3))


@router.get(
    "/healthz",
    response_model=HealthView,
    responses={
        503: {
            "model": HealthView,
            "description": "the database or Kafka is down, or the tracker cannot record",
        }
    },
)
async def healthz(ctx: Context, response: Response) -> HealthView:
    """200 when the database and Kafka both answer and the database has the tracker's
    types; 503 naming what failed otherwise.

    Open without a token, so it says which part failed and the exception's class, never
    an error text.
    """
    database, kafka = await asyncio.gather(
        _timed(check_database(ctx.engine), ctx.health_timeout_s),
        _timed(ctx.kafka_health.check(), ctx.health_timeout_s),
    )
    # After the database's check, on the connection it returned to the pool (a probe
    # opens no second one); not at all when the database is down (no second timeout).
    tracker = (
        await _timed(check_tracker(ctx.engine, ctx.metrics), ctx.health_timeout_s)
        if database.ok
        else HealthCheck(ok=False, detail="database unavailable", seconds=0.0)
    )
    healthy = database.ok and kafka.ok and tracker.ok
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthView(
        status="ok" if healthy else "unavailable",
        checks={"database": database, "kafka": kafka, "tracker": tracker},
        signatures=ctx.signatures.value,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(ctx: Context) -> Response:
    """Every coordinator metric, in the Prometheus exposition format."""
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)
