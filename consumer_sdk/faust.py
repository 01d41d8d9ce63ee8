"""Retention handlers on an existing Faust app (faust-streaming), with the core SDK's guarantees.

    retention = RetentionConsumer("search_index", database_url=...)

    @retention.on_delete("user")
    async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int: ...

    app = faust.App("retention.search_index", **faust_app_settings(retention.kafka))
    attach(app, retention)

Handlers, wire models, idempotency store, retries, DLQ, registration message and acks
are the core SDK's (`RetentionConsumer`, the shared dispatcher and executor); only the
consuming is Faust's. See docs/faust.md for why the agent runs with concurrency 1 and
acks each event by hand once its ack is on the acks topic.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog

try:
    import faust
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "consumer_sdk.faust needs faust-streaming: pip install 'retention-fanout[faust]'"
    ) from exc

from consumer_sdk._internal.dispatch import Dispatcher
from consumer_sdk._internal.executor import EventExecutor
from consumer_sdk._internal.holds import HoldReader
from consumer_sdk._internal.transport import (
    ProducerPort,
    Record,
    consumed_headers,
    kafka_producer,
)
from consumer_sdk._internal.trust import Trust
from consumer_sdk.app import RetentionConsumer
from consumer_sdk.exceptions import ConfigurationError
from schemas import KafkaSettings, Stopped, encode, error_text, retry
from schemas.logs import configure_logging
from schemas.retries import any_error

__all__ = ["FaustRetention", "attach", "faust_app_settings"]

log = structlog.get_logger("consumer_sdk")

# The agent handles one event at a time: faust-streaming commits the highest contiguous
# run of acked offsets, and with concurrency > 1 it can commit past an event still being
# handled (faust-streaming/faust#606, open). One actor acks strictly in offset order.
CONCURRENCY = 1


def faust_app_settings(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for a `faust.App` that consumes the retention topic safely.

    No topic declaration (the coordinator creates the topics; brokers may forbid
    auto-creation), no leader topic, no web server, and no tables (so no changelog
    topics and none of Faust's table-recovery paths); its data directory under the
    system's temporary directory. TLS and SASL come from the same settings as every other
    client of ours, as Faust's `broker_credentials`.
    """
    return {
        **_credentials(kafka),
        "broker": ";".join(
            f"kafka://{server}" for server in sorted(_servers(kafka.bootstrap_servers))
        ),
        "broker_client_id": kafka.effective_client_id,
        "consumer_auto_offset_reset": "earliest",
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "web_enabled": False,
        "stream_wait_empty": True,
        # Faust creates its data directory at start even without tables; keep it out of
        # the working directory ({conf.name} is expanded by Faust).
        "datadir": str(Path(tempfile.gettempdir()) / "retention-faust-{conf.name}-data"),
        # Faust's default is 60 s: a replacement for a killed worker would wait that long
        # for the dead member to leave the group. 10 s is aiokafka's, the core SDK's.
        "broker_session_timeout": 10.0,
    }


def _credentials(kafka: KafkaSettings) -> dict[str, Any]:
    context = kafka.ssl_context()
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        password = kafka.sasl_password
        return {
            "broker_credentials": faust.SASLCredentials(
                username=kafka.sasl_username,
                password=password.get_secret_value() if password is not None else None,
                ssl_context=context,
                mechanism=kafka.sasl_mechanism,
            )
        }
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def _servers(bootstrap: str) -> set[str]:
    return {s.strip() for s in bootstrap.split(",") if s.strip()}


def _record(message: Any) -> Record:
    """Ours of a Faust message, its headers as the core SDK reads aiokafka's: every value
    under every name, so a repeated signature header is refused here as it is there."""
    headers = message.headers or ()
    if isinstance(headers, Mapping):
        headers = _pairs(headers)
    return Record(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        consumed_headers((str(k), v) for k, v in headers),
    )


def _pairs(headers: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    """A mapping's headers as pairs: a name holding several values (a list or tuple of
    them, or a multidict's repeated items) gives one pair each. Faust's aiokafka driver
    hands a list of pairs; a plain dict of one value per name, built by some other driver
    from a record holding a name twice, has already lost one, which no reader of it can
    tell (docs/faust.md)."""
    pairs: list[tuple[Any, Any]] = []
    for name, value in headers.items():
        if isinstance(value, list | tuple):
            pairs.extend((name, one) for one in value)
        else:
            pairs.append((name, value))
    return pairs


class FaustRetention:
    """The retention agent of one Faust app: opens resources on first use, closes at shutdown."""

    def __init__(self, app: Any, retention: RetentionConsumer) -> None:
        self.app = app
        self.retention = retention
        self._stack = AsyncExitStack()
        self._dispatcher: Dispatcher | None = None
        self._holds: HoldReader | None = None
        self._opening = asyncio.Lock()
        self.stopping = asyncio.Event()

    async def open(self) -> Dispatcher:
        """Open the database and store, start the ack producer, publish the registration."""
        async with self._opening:
            if self._dispatcher is not None:
                return self._dispatcher
            r = self.retention
            r._serve_metrics(self._stack)
            resources = await self._stack.enter_async_context(r.resources())
            # Each event's ack is awaited alone: lingering would only add latency.
            producer: ProducerPort = kafka_producer(r.kafka, linger_ms=0)
            await producer.start()
            self._stack.push_async_callback(producer.stop)
            trust = Trust.from_settings(r.service, r.signatures, r.metrics)
            registration = r.registration()
            key, value = registration.key.encode(), encode(registration)
            await (
                await producer.send(
                    r.kafka.topics.services, value, key=key, headers=trust.sign(key, value)
                )
            )
            # The whole holds table before the first event (SPEC §11), as in the core SDK.
            holds = r.hold_reader(trust)
            await holds.start(timeout_s=r.settings.holds_timeout_s)
            self._stack.push_async_callback(holds.stop)
            self._holds = holds
            self._dispatcher = Dispatcher(
                service=r.service,
                topics=r.kafka.topics,
                registry=r.handlers,
                store=resources.store,
                metrics=r.metrics,
                executor=EventExecutor(r.service, r.settings, resources.store, r.metrics),
                producer=producer,
                trust=trust,
                engine=resources.engine,
                holds=holds.table,
            )
            log.info(
                "faust_agent_started",
                service=r.service,
                topic=r.kafka.topics.events,
                group=self.app.conf.id,
                handles=[h.model_dump(mode="json") for h in registration.handles],
            )
            return self._dispatcher

    async def on_assigned(self, partitions: set[Any]) -> None:
        """After each rebalance: publish the registration now, not at the first event.

        The tracker must know the service before events arrive, or it cannot tell who
        still owes an ack; `partitions_assigned` is also the core SDK's readiness line.
        """
        try:
            await self.open()
        except Exception as exc:
            # Not fatal here: `handle` opens (and retries) again at the first event.
            log.error(
                "registration_publish_failed",
                service=self.retention.service,
                error=error_text(exc),
            )
        log.info(
            "partitions_assigned",
            service=self.retention.service,
            partitions=sorted(tp.partition for tp in partitions),
        )

    async def close(self) -> None:
        self.stopping.set()
        async with self._opening:
            self._dispatcher = None
            self._holds = None
            try:
                await self._stack.aclose()
            finally:
                # `is_erased`'s table, if the app used it; the consumer itself never started.
                await self.retention.stop()

    async def handle(self, message: Any) -> bool:
        """Handle one message and await its ack (and DLQ record); False if abandoned.

        Kafka or database trouble is retried here, in place, until it works or the app
        stops: letting the error out would restart the agent, Faust would go on with the
        next events, and its commit would pass this one (see `CONCURRENCY`).
        """
        record = _record(message)

        async def attempt() -> bool:
            try:
                dispatcher = await self.open()
                if self._holds is not None:
                    # Holds published before this event is handled are in the table.
                    await self._holds.catch_up()
                done = await dispatcher.dispatch([record], self.stopping)
                if done.sends:
                    await asyncio.gather(*done.sends)
            except Exception:
                if self.app.should_stop:
                    # Stopping: no wait, no retry; the event stays unacked.
                    self.stopping.set()
                raise
            return done.last_done is not None

        try:
            return await retry(
                attempt,
                policy=self.retention.settings.outage_policy,
                what="faust_event",
                retry_on=any_error,
                stop=self.stopping,
                log_fields={
                    "service": self.retention.service,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
        except Stopped:
            return False

    async def agent(self, stream: Any) -> None:
        """The Faust agent: manual acks, each after the event's ack is on the acks topic."""
        watcher = asyncio.create_task(self._watch_stop())
        manual = stream.noack()
        try:
            async for event in manual.events():
                if not await self.handle(event.message):
                    # Stopping: leave the event unacked, so its offset is not committed.
                    return
                await manual.ack(event)
        finally:
            watcher.cancel()

    def run(self, *, loglevel: str = "INFO") -> None:
        """Blocking: run the app's worker with the SDK's log pipeline until SIGTERM/SIGINT."""
        configure_logging(loglevel)
        worker = faust.Worker(
            self.app,
            loglevel=loglevel,
            quiet=True,  # no banner or spinner on stdout: logs are JSON lines on stderr
            override_logging=False,
            redirect_stdouts=False,
        )
        try:
            worker.execute_from_commandline()
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                raise

    async def _watch_stop(self) -> None:
        # The app's stop begins by waiting for in-hand events to be acked; a handler
        # waiting for a retry must learn of it then, not when the agent is cancelled.
        await self.app.wait_until_stopped()
        self.stopping.set()


def attach(app: Any, retention: RetentionConsumer) -> FaustRetention:
    """Consume `retention`'s events topic in `app` with one agent; return its handle.

    The consumer group is the Faust app's id. `retention.kafka` must name the same
    brokers as the app: acks, DLQ records and the registration are produced there.
    """
    if not isinstance(app, faust.App):
        raise ConfigurationError(f"attach() needs a faust.App, not {type(app).__name__}")
    if not len(retention.handlers):
        raise ConfigurationError(f"service {retention.service!r} registered no handlers")
    group = retention.settings.group_id
    if group is not None and group != app.conf.id:
        raise ConfigurationError(
            f"a Faust app consumes in the group named by its id ({app.conf.id!r}), "
            f"not {group!r}: unset RETENTION_CONSUMER_GROUP_ID or rename the app"
        )
    brokers = {f"{url.host}:{url.port}" for url in app.conf.broker}
    if brokers != _servers(retention.kafka.bootstrap_servers):
        raise ConfigurationError(
            f"the Faust app's brokers {sorted(brokers)} differ from the retention "
            f"settings' {sorted(_servers(retention.kafka.bootstrap_servers))}"
        )
    handle = FaustRetention(app, retention)
    topic = app.topic(
        retention.kafka.topics.events,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        # Empty values reach the agent (and the DLQ) instead of being dropped and acked.
        allow_empty=True,
    )
    app.agent(topic, name=f"retention.{retention.service}", concurrency=CONCURRENCY)(handle.agent)
    app.on_partitions_assigned.connect(_on_assigned(handle))
    app.on_before_shutdown.connect(_closer(handle))
    return handle


def _on_assigned(handle: FaustRetention) -> Any:
    async def on_assigned(app: Any, assigned: set[Any], **kwargs: Any) -> None:
        await handle.on_assigned(assigned)

    return on_assigned


def _closer(handle: FaustRetention) -> Any:
    async def close(app: Any, **kwargs: Any) -> None:
        await handle.close()

    return close
