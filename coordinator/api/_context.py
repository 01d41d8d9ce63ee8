"""What the routes need from the process that serves them, injected through `app.state`."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError
from coordinator.api.health import KafkaHealth
from coordinator.api.tokens import TokenStore
from coordinator.clock import Clock
from coordinator.copies.backups import BackupHorizon
from coordinator.erasure.service import Erasure
from coordinator.evidence.pseudonyms import Pepper
from coordinator.metrics import Metrics
from coordinator.operations.republish import RepublishSetup
from coordinator.policy.model import PolicySet
from coordinator.settings import Settings
from schemas.signing import SignatureMode

__all__ = [
    "ApiContext",
    "Connection",
    "Context",
    "RunInProgress",
    "RunTrigger",
    "connection",
    "context",
]


class RunInProgress(CoordinatorError, RuntimeError):
    """A run triggered over HTTP is still going (the API answers 409)."""


RunTrigger = Callable[[list[str] | None, bool, str], Awaitable[uuid.UUID]]
"""Starts a run of these policies (None: all), forced or not, for an actor; returns its id."""


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the routes use; the owner closes `kafka_health` when it stops serving."""

    engine: AsyncEngine
    kafka_health: KafkaHealth
    registry: CollectorRegistry
    clock: Clock
    tokens: TokenStore | None
    policy_set: PolicySet
    global_schedule: str
    health_timeout_s: float = 2.0
    trigger_run: RunTrigger | None = None
    signatures: SignatureMode = SignatureMode.REQUIRED
    """Shown by /healthz: `off` must be visible from outside (SPEC §9)."""
    erasure: Erasure | None = None
    republish: RepublishSetup | None = None
    """Kafka and the signing key for the admin re-publish routes; None: they answer 503."""
    settings: Settings | None = None
    """For what needs the key store (archive read) and the backup retentions."""
    metrics: Metrics | None = None
    """The process's metrics, for those a route sets (/healthz: the tracker's missing
    types); None: no route sets any."""
    # The console's session cookies (SPEC §14): signed with this secret, valid this long.
    ui_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    ui_session_s: float = 8 * 3600.0
    pepper: Pepper | None = field(default=None, repr=False)
    """Finds evidence whose entity ids are HMACs by now (SPEC §13)."""

    @property
    def backups(self) -> BackupHorizon:
        if self.settings is None:
            return BackupHorizon(None, None, separate_keystore=False)
        return BackupHorizon.of(self.settings)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


Context = Annotated[ApiContext, Depends(context)]


async def connection(ctx: Context) -> AsyncIterator[AsyncConnection]:
    """A connection for one request's reads (rolled back at the end)."""
    async with ctx.engine.connect() as conn:
        yield conn


Connection = Annotated[AsyncConnection, Depends(connection)]
