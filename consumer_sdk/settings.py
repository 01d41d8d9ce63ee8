"""Settings of a consumer, from `RETENTION_*` variables or keyword arguments."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import RetryPolicy

__all__ = ["ConsumerSettings"]


class ConsumerSettings(BaseSettings):
    """How the SDK consumes, retries and stops; Kafka itself is `schemas.KafkaSettings`."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTION_",
        extra="ignore",
        populate_by_name=True,
        # Errors never echo the input: it may be a secret (a database URL, a key).
        hide_input_in_errors=True,
    )

    database_url: SecretStr | None = Field(
        default=None,
        # Not RETENTION_DATABASE_URL: that one is the coordinator's database, never a service's.
        validation_alias=AliasChoices("database_url", "RETENTION_SERVICE_DATABASE_URL"),
        description=(
            "The service's own PostgreSQL database (plain postgresql:// accepted). When set, "
            "the SDK keeps its idempotency table there and hands handlers a connection in "
            "the same transaction."
        ),
    )
    group_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("group_id", "RETENTION_CONSUMER_GROUP_ID"),
        description="Consumer group; default `retention.<service>`.",
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        validation_alias=AliasChoices("max_attempts", "RETENTION_CONSUMER_MAX_ATTEMPTS"),
        description="Handler attempts per event unless the handler sets its own.",
    )
    retry_initial_s: float = Field(
        default=0.5,
        ge=0,
        validation_alias=AliasChoices("retry_initial_s", "RETENTION_CONSUMER_RETRY_INITIAL_S"),
        description="First backoff between attempts; doubles each time.",
    )
    retry_max_s: float = Field(
        default=30.0,
        ge=0,
        validation_alias=AliasChoices("retry_max_s", "RETENTION_CONSUMER_RETRY_MAX_S"),
        description="Longest backoff between attempts.",
    )
    retry_jitter_s: float = Field(
        default=0.5,
        ge=0,
        validation_alias=AliasChoices("retry_jitter_s", "RETENTION_CONSUMER_RETRY_JITTER_S"),
        description="Random extra up to this many seconds on each backoff.",
    )
    max_batch: int = Field(
        default=2000,
        ge=1,
        validation_alias=AliasChoices("max_batch", "RETENTION_CONSUMER_MAX_BATCH"),
        description="Records fetched per poll; offsets are committed once per batch per partition.",
    )
    ack_batch_bytes: int = Field(
        default=512 * 1024,
        ge=16 * 1024,
        # A record batch larger than the topic's `max.message.bytes` (1 MiB + 12 by
        # default) is refused whole, retried whole, and stalls the partition.
        le=1_000_000,
        validation_alias=AliasChoices("ack_batch_bytes", "RETENTION_CONSUMER_ACK_BATCH_BYTES"),
        description="Most bytes of acks in one record batch of one partition; at most the "
        "acks topic's `max.message.bytes` (1 MiB by default), and at most 1,000,000.",
    )
    gc_threshold: int = Field(
        default=50_000,
        ge=1,
        # CPython refuses thresholds of 2**31 and over: every batch would fail.
        le=10_000_000,
        validation_alias=AliasChoices("gc_threshold", "RETENTION_CONSUMER_GC_THRESHOLD"),
        description="Allocations between two collections of the garbage collector's "
        "youngest generation while batches are handled (process-wide; CPython's default "
        "is 700; docs/sdk.md).",
    )
    idempotency_retention_days: float | None = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices(
            "idempotency_retention_days", "RETENTION_CONSUMER_IDEMPOTENCY_RETENTION_DAYS"
        ),
        description="Processed-event records older than this are pruned (at start, then "
        "daily); keep it longer than the events topic's retention. None keeps them forever.",
    )
    poll_timeout_s: float = Field(
        default=0.5,
        gt=0,
        validation_alias=AliasChoices("poll_timeout_s", "RETENTION_CONSUMER_POLL_TIMEOUT_S"),
        description="How long one poll waits for records.",
    )
    holds_timeout_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("holds_timeout_s", "RETENTION_CONSUMER_HOLDS_TIMEOUT_S"),
        description="Bound on finding the holds topic at start, and on reading it to its "
        "end before a batch; past it the batch waits and is tried again.",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices(
            "shutdown_timeout_s", "RETENTION_CONSUMER_SHUTDOWN_TIMEOUT_S"
        ),
        description="Bound on finishing in-flight handlers at stop or rebalance.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("metrics_port", "RETENTION_CONSUMER_METRICS_PORT"),
        description=(
            "Serve this consumer's retention_consumer_* metrics at /metrics on this port "
            "(0 picks a free one). Unset: no HTTP endpoint; the service can expose "
            "`app.metrics.registry` through its own web framework instead."
        ),
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("metrics_host", "RETENTION_CONSUMER_METRICS_HOST"),
        description="Address the metrics endpoint binds to; 0.0.0.0 inside containers.",
    )
    error_backoff_s: float = Field(
        default=1.0,
        gt=0,
        validation_alias=AliasChoices("error_backoff_s", "RETENTION_CONSUMER_ERROR_BACKOFF_S"),
        description=(
            "First pause before polling again or retrying a batch after Kafka or the "
            "database failed; doubles up to five times this."
        ),
    )
    handler_timeout_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("handler_timeout_s", "RETENTION_CONSUMER_HANDLER_TIMEOUT_S"),
        description=(
            "Longest one handler call may take. Past it the call is cancelled, its "
            "transaction rolled back, and the attempt retried like `RetryLater` "
            "(`HandlerTimeout`); after the last attempt the event is `failed` and dead-lettered."
        ),
    )
    suppression_pepper_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "suppression_pepper_file", "RETENTION_SUPPRESSION_PEPPER_FILE"
        ),
        description=(
            "The suppression list's pepper, the coordinator's own file (SPEC §12): "
            "`is_erased` needs it to compute the keys of the erased topic."
        ),
    )
    suppression_sync_timeout_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices(
            "suppression_sync_timeout_s", "RETENTION_CONSUMER_SUPPRESSION_SYNC_TIMEOUT_S"
        ),
        description="Bound on reading the erased topic to its end before the first `is_erased`.",
    )
    handler_cancel_grace_s: float = Field(
        default=5.0,
        gt=0,
        validation_alias=AliasChoices(
            "handler_cancel_grace_s", "RETENTION_CONSUMER_HANDLER_CANCEL_GRACE_S"
        ),
        description=(
            "How long a timed-out handler has to end once cancelled. One that is still "
            "running then (it swallowed `CancelledError`) is abandoned: its database "
            "connection is discarded, its transaction rolled back, and the event is "
            "`failed` at once (`HandlerAbandoned`)."
        ),
    )
    error_messages: bool = Field(
        default=False,
        validation_alias=AliasChoices("error_messages", "RETENTION_CONSUMER_ERROR_MESSAGES"),
        description=(
            "Opt-in: put a handler's exception message (and an `EntityNotFound` text) into "
            "ack `detail` and DLQ headers. Off, they carry only the exception class and "
            "its SQLSTATE or Kafka error code: messages can hold personal data (SPEC §13)."
        ),
    )

    @property
    def outage_policy(self) -> RetryPolicy:
        """The SDK's one outage policy: polls, batches, and the Faust adapter's events."""
        return RetryPolicy(
            initial_s=self.error_backoff_s,
            max_s=5 * self.error_backoff_s,
            jitter_s=self.error_backoff_s / 4,
        )
