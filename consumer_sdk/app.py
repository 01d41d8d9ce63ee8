"""`RetentionConsumer`: the one object a service author creates (SPEC §5)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from typing import Any, TypeVar

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from consumer_sdk._internal.holds import HoldReader, HoldTable, kafka_hold_source
from consumer_sdk._internal.registry import BatchResult, HandlerRegistry
from consumer_sdk._internal.runtime import Runtime
from consumer_sdk._internal.suppression import SuppressionTable
from consumer_sdk._internal.transport import kafka_consumer, kafka_producer
from consumer_sdk._internal.trust import Trust
from consumer_sdk.exceptions import ConfigurationError
from consumer_sdk.idempotency import IdempotencyStore, PostgresIdempotencyStore, PrunableStore
from consumer_sdk.metrics import ConsumerMetrics
from consumer_sdk.settings import ConsumerSettings
from schemas import (
    EventType,
    KafkaSettings,
    ServiceRegistration,
    async_database_url,
    service_group,
    utc_now,
)
from schemas.signing import SignatureSettings
from schemas.suppression import PepperError, read_pepper

__all__ = ["SDK_VERSION", "RetentionConsumer"]

log = structlog.get_logger("consumer_sdk")

_PRUNE_INTERVAL_S = 86400.0

try:
    SDK_VERSION = metadata.version("retention-fanout")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    SDK_VERSION = "0+unknown"

H = TypeVar("H", bound=Callable[..., Awaitable[int]])
B = TypeVar("B", bound=Callable[..., Awaitable[BatchResult]])
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
StartupHook = Callable[[AsyncConnection], Awaitable[None]]
S = TypeVar("S", bound=StartupHook)
StoreFactory = Callable[[AsyncEngine | None], IdempotencyStore]


@dataclass(slots=True)
class Resources:
    """What a started consumer (or a test kit) holds open: engine and store."""

    engine: AsyncEngine | None
    store: IdempotencyStore | None


class RetentionConsumer:
    """Registers a service's handlers and runs them against the events topic.

    Args:
        service: The service's name; its consumer group is `retention.<service>`.
        kafka: Kafka settings; default `KafkaSettings()` from `RETENTION_KAFKA_*`.
        settings: Everything else; default `ConsumerSettings()` from `RETENTION_*`.
        database_url: The service's own database (overrides `settings.database_url`).
        engine: An engine of the service's own instead of a URL; the SDK won't dispose it.
        idempotency: A store of your own; default a PostgreSQL table when there is a database.
        max_attempts: Default attempts per event (overrides `settings.max_attempts`).
        registry: Where metrics go; default a fresh `CollectorRegistry`.
        signatures: Keys and `RETENTION_SIGNATURES`; default `SignatureSettings()` from env.
    """

    def __init__(
        self,
        service: str,
        *,
        kafka: KafkaSettings | None = None,
        settings: ConsumerSettings | None = None,
        database_url: str | None = None,
        engine: AsyncEngine | None = None,
        idempotency: IdempotencyStore | None = None,
        max_attempts: int | None = None,
        registry: CollectorRegistry | None = None,
        signatures: SignatureSettings | None = None,
    ) -> None:
        if not service or not service.strip() or len(service) > 255:
            raise ConfigurationError(f"service must be 1-255 characters, not {service!r}")
        base = settings if settings is not None else ConsumerSettings()
        updates: dict[str, Any] = {}
        if database_url is not None:
            updates["database_url"] = SecretStr(database_url)
        if max_attempts is not None:
            if max_attempts < 1:
                raise ConfigurationError(f"max_attempts must be >= 1, not {max_attempts}")
            updates["max_attempts"] = max_attempts
        self.settings = base.model_copy(update=updates)
        if self.settings.database_url is not None:
            # A bad URL fails here, not later.
            async_database_url(self.settings.database_url.get_secret_value())
        if engine is not None and self.settings.database_url is not None:
            raise ConfigurationError("give either engine= or database_url=, not both")
        self.service = service
        # Each service's own client id, so broker logs and quotas tell services apart.
        self.kafka = (kafka if kafka is not None else KafkaSettings()).for_client(service)
        self.signatures = signatures if signatures is not None else SignatureSettings()
        self.metrics = ConsumerMetrics(registry)
        self._engine = engine
        self._store = idempotency
        self._registry = HandlerRegistry()
        self._startup: list[StartupHook] = []
        self._runtime: Runtime | None = None
        self._running = AsyncExitStack()
        self._metrics_address: tuple[str, int] | None = None
        self._suppression: SuppressionTable | None = None
        self._suppression_opening = asyncio.Lock()

    # -- registration ----------------------------------------------------------------

    @property
    def has_database(self) -> bool:
        return self._engine is not None or self.settings.database_url is not None

    @property
    def group_id(self) -> str:
        return self.settings.group_id or service_group(self.service)

    def on_delete(
        self,
        entity_type: str,
        *,
        max_attempts: int | None = None,
        throws: Iterable[type[BaseException]] = (),
    ) -> Callable[[H], H]:
        """Register the handler that deletes `entity_type` entities.

        Args:
            max_attempts: Attempts for this handler (default: the app's).
            throws: Exceptions that mean "never going to work": no retries.
        """
        return self._register(entity_type, EventType.DELETE, max_attempts, throws)

    def on_anonymize(
        self,
        entity_type: str,
        *,
        max_attempts: int | None = None,
        throws: Iterable[type[BaseException]] = (),
    ) -> Callable[[H], H]:
        """Register the handler that anonymizes `entity_type` entities; see `on_delete`."""
        return self._register(entity_type, EventType.ANONYMIZE, max_attempts, throws)

    def on_delete_batch(
        self,
        entity_type: str,
        *,
        max_attempts: int | None = None,
        throws: Iterable[type[BaseException]] = (),
    ) -> Callable[[B], B]:
        """Register a set-based handler that deletes a batch of `entity_type` entities.

        It takes `(events: Sequence[RetentionEvent], ...)` and returns, per event, the
        records affected or an `EntityNotFound`: a sequence in the events' order or a
        mapping by event id. Same options as `on_delete`; one handler per entity type
        and action, single or batch.
        """
        return self._register(entity_type, EventType.DELETE, max_attempts, throws, batch=True)

    def on_anonymize_batch(
        self,
        entity_type: str,
        *,
        max_attempts: int | None = None,
        throws: Iterable[type[BaseException]] = (),
    ) -> Callable[[B], B]:
        """Register a set-based anonymize handler; see `on_delete_batch`."""
        return self._register(entity_type, EventType.ANONYMIZE, max_attempts, throws, batch=True)

    def verify(self, entity_type: str) -> Callable[[H], H]:
        """Register the handler counting the records the service still holds for an
        `entity_type` entity it was asked to delete (SPEC §12).

        It takes `(event)`, `(event, conn: AsyncConnection)` (a read-only connection,
        never committed) or `(event, ctx: HandlerContext)`, and returns the count: 0 is
        acked `verified`, more `still_present`. Without one, a verify event for a type
        the service handles is acked `unsupported`. A verify event never reaches an
        `on_delete`/`on_anonymize` handler.
        """

        def decorator(func: H) -> H:
            self._registry.add_verifier(entity_type, func, database_available=self.has_database)
            return func

        return decorator

    def on_startup(self, hook: S) -> S:
        """Run `hook(conn)` in one transaction on the service's database before consuming."""
        if not self.has_database:
            raise ConfigurationError(
                f"on_startup({getattr(hook, '__qualname__', hook)}): the consumer has no database"
            )
        self._startup.append(hook)
        return hook

    def _register(
        self,
        entity_type: str,
        action: EventType,
        max_attempts: int | None,
        throws: Iterable[type[BaseException]],
        *,
        batch: bool = False,
    ) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            self._registry.add(
                entity_type,
                action,
                func,
                max_attempts=max_attempts,
                throws=throws,
                database_available=self.has_database
                or bool(self._store is not None and self._store.provides_connection),
                batch=batch,
            )
            return func

        return decorator

    @property
    def handlers(self) -> HandlerRegistry:
        return self._registry

    def registration(self) -> ServiceRegistration:
        return ServiceRegistration(
            service=self.service,
            handles=self._registry.handles(),
            sdk_version=SDK_VERSION,
            registered_at=utc_now(),
        )

    # -- suppression -----------------------------------------------------------------

    async def is_erased(self, entity_type: str, entity_id: str) -> bool:
        """Whether `type:id` is on the suppression list (SPEC §12): erased by the
        coordinator and not expired. Refuse to import it again when true.

        The first call reads the erased topic to its end (bounded by
        `suppression_sync_timeout_s`); later calls answer from that table, which follows the
        topic in the background. Needs `RETENTION_SUPPRESSION_PEPPER_FILE`; the table is
        closed by `stop()`.
        """
        table = await self._suppression_table()
        return table.contains(entity_type, entity_id)

    async def _suppression_table(self) -> SuppressionTable:
        async with self._suppression_opening:
            if self._suppression is not None:
                return self._suppression
            path = self.settings.suppression_pepper_file
            if path is None:
                raise ConfigurationError(
                    f"service {self.service!r}: is_erased needs the suppression pepper "
                    "(RETENTION_SUPPRESSION_PEPPER_FILE, the coordinator's own file)"
                )
            try:
                pepper = read_pepper(path)
            except PepperError as exc:
                raise ConfigurationError(f"service {self.service!r}: {exc}") from None
            table = SuppressionTable(
                self.kafka, pepper, Trust.from_settings(self.service, self.signatures, self.metrics)
            )
            await table.start(timeout_s=self.settings.suppression_sync_timeout_s)
            self._suppression = table
            return table

    async def _close_suppression(self) -> None:
        table, self._suppression = self._suppression, None
        if table is not None:
            await table.stop()

    # -- resources -------------------------------------------------------------------

    @asynccontextmanager
    async def resources(
        self, *, store_factory: StoreFactory | None = None
    ) -> AsyncIterator[Resources]:
        """Open the engine and the store, run startup hooks; close them on exit.

        The test kit passes a `store_factory` (given the engine, if any); a running
        consumer uses the app's store, or PostgreSQL when there is a database.
        """
        owned: AsyncEngine | None = None
        engine = self._engine
        if engine is None and self.settings.database_url is not None:
            engine = owned = create_async_engine(
                async_database_url(self.settings.database_url.get_secret_value()),
                pool_pre_ping=True,
                # A statement's parameters (personal data) stay out of its errors.
                hide_parameters=True,
            )
        try:
            chosen = store_factory(engine) if store_factory else self._store
            if chosen is None and engine is not None:
                chosen = PostgresIdempotencyStore(engine)
            if self._registry.needs_connection and not (chosen and chosen.provides_connection):
                raise ConfigurationError(
                    f"service {self.service!r}: a handler takes a connection but the "
                    "idempotency store provides none"
                )
            if engine is not None and self._startup:
                async with engine.begin() as conn:
                    for hook in self._startup:
                        await hook(conn)
            if chosen is not None:
                await chosen.open()
            try:
                yield Resources(engine, chosen)
            finally:
                if chosen is not None:
                    await chosen.close()
        finally:
            if owned is not None:
                await owned.dispose()

    # -- running ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, publish the registration, join the group, start consuming."""
        if self._runtime is not None:
            raise ConfigurationError(f"service {self.service!r} is already started")
        if not len(self._registry):
            raise ConfigurationError(f"service {self.service!r} registered no handlers")
        runtime: Runtime | None = None
        async with AsyncExitStack() as stack:
            self._serve_metrics(stack)
            resources = await stack.enter_async_context(self.resources())
            trust = Trust.from_settings(self.service, self.signatures, self.metrics)
            runtime = Runtime(
                service=self.service,
                topics=self.kafka.topics,
                settings=self.settings,
                registry=self._registry,
                store=resources.store,
                metrics=self.metrics,
                registration=self.registration(),
                trust=trust,
                holds=self.hold_reader(trust),
                consumer=kafka_consumer(
                    self.kafka,
                    group_id=self.group_id,
                    max_records=self.settings.max_batch,
                    on_revoked=lambda p: runtime.on_revoked(p) if runtime else _noop(),
                    on_assigned=lambda p: runtime.on_assigned(p) if runtime else _noop(),
                ),
                producer=kafka_producer(self.kafka, max_batch_bytes=self.settings.ack_batch_bytes),
                engine=resources.engine,
            )
            await runtime.start()
            retention = self.settings.idempotency_retention_days
            if retention is not None and isinstance(resources.store, PrunableStore):
                # Pushed after the store: cancelled before the store closes.
                pruning = asyncio.create_task(
                    self._prune_forever(resources.store, timedelta(days=retention)),
                    name=f"retention-prune-{self.service}",
                )
                stack.push_async_callback(_cancel, pruning)
            self._running = stack.pop_all()
        self._runtime = runtime

    def hold_reader(self, trust: Trust) -> HoldReader:
        """The holds table, read from `data.retention.holds` (SPEC §11)."""
        return HoldReader(
            kafka_hold_source(self.kafka),
            HoldTable(trust),
            read_timeout_s=self.settings.holds_timeout_s,
        )

    async def _prune_forever(self, store: PrunableStore, retention: timedelta) -> None:
        """At start, then daily: forget processed events older than `retention`."""
        while True:
            try:
                pruned = await store.prune(self.service, utc_now() - retention)
                if pruned:
                    log.info("idempotency_pruned", service=self.service, records=pruned)
            except Exception as exc:
                # Only the class: a driver's message may quote bound parameters.
                log.warning(
                    "idempotency_prune_failed", service=self.service, error=type(exc).__name__
                )
            await asyncio.sleep(_PRUNE_INTERVAL_S)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Host and port of the running metrics endpoint, if `metrics_port` is set."""
        return self._metrics_address

    def _serve_metrics(self, stack: AsyncExitStack) -> None:
        port = self.settings.metrics_port
        # Already serving: the Faust adapter retries its open after a failure.
        if port is None or self._metrics_address is not None:
            return
        host = self.settings.metrics_host
        try:
            server, thread = start_http_server(port, host, registry=self.metrics.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"service {self.service!r}: cannot serve metrics on {host}:{port}: {exc}"
            ) from exc
        self._metrics_address = (host, int(server.server_address[1]))
        log.info("metrics_endpoint_started", service=self.service, address=self._metrics_address)

        async def close() -> None:
            self._metrics_address = None
            # shutdown() waits for serve_forever's next poll: keep the event loop free.
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            thread.join()

        stack.push_async_callback(close)

    async def stop(self) -> None:
        """Finish in-flight handlers, send their acks, commit, leave the group, close.

        Bounded by `settings.shutdown_timeout_s`; whatever is cut off is redelivered later.
        """
        runtime, self._runtime = self._runtime, None
        try:
            if runtime is not None:
                try:
                    await runtime.stop()
                finally:
                    await self._running.aclose()
        finally:
            await self._close_suppression()

    async def serve(self) -> None:
        """Start, run until SIGTERM/SIGINT, stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            assert self._runtime is not None
            # What exists now (imported modules, clients, the handlers' own state) lives as
            # long as the process. Frozen, it is left out of the full collections that
            # each batch's short-lived events, acks and rows trigger, which otherwise walk
            # it all every time (docs/sdk.md).
            gc.freeze()
            stopped = asyncio.create_task(stop.wait())
            polling = asyncio.create_task(self._runtime.wait())
            try:
                await asyncio.wait([stopped, polling], return_when=asyncio.FIRST_COMPLETED)
                log.info("consumer_stopping", service=self.service)
            finally:
                stopped.cancel()
                try:
                    await self.stop()  # re-raises if the poll loop crashed
                finally:
                    await asyncio.gather(polling, stopped, return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def run(self) -> None:
        """Blocking: consume until SIGTERM or SIGINT, then stop gracefully."""
        asyncio.run(self.serve())


async def _noop() -> None:
    return None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
