"""`/healthz` (database and Kafka, each bounded by a short timeout) and `/metrics`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from aiokafka.admin import AIOKafkaAdminClient
from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api._context import Context
from coordinator.api.models import HealthCheck, HealthView
from schemas import KafkaSettings
from schemas.errors import error_text

__all__ = ["check_database", "check_kafka", "router"]

router = APIRouter(tags=["operations"])


class Unhealthy(Exception):
    """A check's own finding; its text is ours and safe to serve (a driver's may not be)."""


async def check_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(select(1))


async def check_kafka(kafka: KafkaSettings) -> None:
    """The broker answers a metadata request and the events and acks topics exist."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    missing = sorted({kafka.topics.events, kafka.topics.acks} - existing)
    if missing:
        raise Unhealthy(f"topics missing: {', '.join(missing)}")


async def _timed(check: Awaitable[None], timeout_s: float) -> HealthCheck:
    started = time.monotonic()
    detail = ""
    try:
        async with asyncio.timeout(timeout_s):
            await check
    except TimeoutError:
        detail = f"no answer within {timeout_s:g}s"
    except Unhealthy as exc:
        detail = str(exc)
    except Exception as exc:
        detail = error_text(exc)
    return HealthCheck(ok=not detail, detail=detail, seconds=round(time.monotonic() - started, 3))


@router.get(
    "/healthz",
    response_model=HealthView,
    responses={503: {"model": HealthView, "description": "the database or Kafka is down"}},
)
async def healthz(ctx: Context, response: Response) -> HealthView:
    """200 when the database and Kafka both answer; 503 naming what failed otherwise."""
    database, kafka = await asyncio.gather(
        _timed(check_database(ctx.engine), ctx.health_timeout_s),
        _timed(check_kafka(ctx.kafka), ctx.health_timeout_s),
    )
    healthy = database.ok and kafka.ok
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthView(
        status="ok" if healthy else "unavailable", checks={"database": database, "kafka": kafka}
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(ctx: Context) -> Response:
    """Every coordinator metric, in the Prometheus exposition format."""
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)
