"""The coordinator's settings, read from `RETENTION_*` variables (and `.env` files)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.evidence.retention import Retention
from coordinator.policy.durations import parse_duration
from coordinator.purge.scheduler import validate_cron
from schemas import DEFAULT_DATABASE_URL, KafkaSettings
from schemas.kafka import Compression
from schemas.signing import ProofFormat, SignatureSettings

__all__ = [
    "COORDINATOR_CLIENT_ID",
    "NotifySettings",
    "RelaySettings",
    "ServeSettings",
    "Settings",
    "TrackerSettings",
]

COORDINATOR_CLIENT_ID = "retention-coordinator"
"""Kafka client id of the relay, the tracker and the admin client unless
`RETENTION_KAFKA_CLIENT_ID` names another."""


class TrackerSettings(BaseSettings):
    """The completion tracker: its consumer group, batching and reminder schedule."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTION_TRACKER_", extra="ignore", populate_by_name=True
    )

    group_id: str = Field(
        default="retention.tracker", description="Consumer group of the acks consumer."
    )
    batch_size: int = Field(
        default=2000, ge=1, le=5000, description="Most acks applied in one transaction."
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often housekeeping (tracking new events, reminders, deadlines) "
        "runs beside the ack loop, and the longest wait for acks in one read.",
    )
    pass_events: int = Field(
        default=1000,
        ge=1,
        le=5000,
        description="Most events one tracking pass starts to follow in one transaction. "
        "A pass holds the audit chain's lock, which every ack batch needs too, until it "
        "commits: a smaller pass lets ack batches in sooner, at more passes per event.",
    )
    ack_fetch_max_wait_ms: int = Field(
        default=50,
        ge=0,
        le=5000,
        description="Longest the broker holds the acks consumer's fetch for new records. "
        "While one is held no other fetch goes to that broker, so acks already written "
        "wait behind it (Kafka's 500 ms default left 0.2-0.3 s idle at a backlog's end).",
    )
    gc_threshold: int = Field(
        default=50_000,
        ge=1,
        # CPython refuses thresholds of 2**31 and over: every batch would fail.
        le=10_000_000,
        description="Allocations between two collections of the garbage collector's "
        "youngest generation from a batch of acks' parse to its record, not while "
        "waiting for acks (process-wide: beside a relay round the larger setting applies; "
        "CPython's default 700 cost the tracker about a tenth of its CPU per ack; "
        "docs/tracking.md).",
    )
    reminder_interval_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="Wait after publication before the first re-publication of an event "
        "that some expected service has not acknowledged.",
    )
    reminder_backoff: float = Field(
        default=2.0, ge=1.0, description="Each further reminder waits this factor longer."
    )
    max_reminders: int = Field(
        default=3,
        ge=0,
        description="Re-publications on the growing schedule; later ones come every "
        "`slow_reminder_interval_s`.",
    )
    slow_reminder_interval_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Wait between reminders once `max_reminders` are spent, until the event "
        "is completed or nothing is left to remind.",
    )
    gauges_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often the tracker recounts its open-backlog gauges (pending acks, "
        "overdue events); housekeeping runs every poll interval, the counts need not.",
    )


class RelaySettings(BaseSettings):
    """The outbox relay's batching, producer tuning and fault handling (`RETENTION_RELAY_*`).

    docs/relay.md explains each default and the measurements behind it.
    """

    model_config = SettingsConfigDict(env_prefix="RETENTION_RELAY_", extra="ignore")

    batch_size: int = Field(
        default=10_000,
        ge=1,
        le=50_000,
        description="Events claimed and published per round (whole outbox batches; docs/relay.md).",
    )
    idle_sleep_s: float = Field(
        default=0.5,
        gt=0,
        description="Longest pause before polling again when the outbox is empty; a "
        "writer's notification (`listen`) ends it sooner.",
    )
    listen: bool = Field(
        default=True,
        description="Wake on the outbox writers' NOTIFY, on a LISTEN connection of the "
        "relay's own; false behind a pooler that cannot LISTEN (PgBouncer in transaction "
        "mode): polling every idle_sleep_s only (docs/relay.md).",
    )
    linger_ms: int = Field(
        default=5, ge=0, description="Producer linger: how long a partition batch may fill."
    )
    max_batch_size: int = Field(
        default=512 * 1024,
        ge=16 * 1024,
        description="Producer per-partition batch size in bytes.",
    )
    compression: Compression = Field(
        default="none",
        description="Codec of the event batches: none and gzip are read by every mainstream "
        "client out of the box (docs/protocol.md#compression).",
    )
    send_chunk: int = Field(
        default=1024,
        ge=1,
        le=50_000,
        description="The least number of encoded events signed and handed to the producer "
        "together, checked after each outbox batch is encoded (whole signature trees): the "
        "producer sends one chunk while the relay encodes the next batch.",
    )
    producer: Literal["aiokafka", "confluent"] = Field(
        default="aiokafka",
        description="The relay's Kafka client: aiokafka (the default), or confluent-kafka "
        "(librdkafka; the `fast` extra) for a higher publish rate (docs/relay.md).",
    )
    signature_batch: int = Field(
        default=128,
        ge=1,
        le=50_000,
        description="Records per signed Merkle tree: one Ed25519 signature each, and a proof "
        "of log2(n) steps in every record (docs/protocol.md).",
    )
    proof_format: ProofFormat = Field(
        default=ProofFormat.V2,
        description="v2: one binary `retention-batch` header per signed event (about half "
        "v1's header bytes); v1: `retention-signature` + `retention-proof`, for services "
        "whose SDK predates v2 (docs/protocol.md, docs/upgrading.md).",
    )
    round_claims: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Most claims one round sends back to back, each encoded, signed and "
        "handed over while the previous one's acknowledgements are awaited; 1: one claim a "
        "round, sent only after the previous round committed (docs/relay.md).",
    )
    busy_chain_claims: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Most claims one round sends, each marked, while another writer holds "
        "the audit chain's lock; 1: wait for the lock after the first (docs/relay.md).",
    )
    malloc_mmap_threshold: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        # glibc's documented maximum (mallopt(3)); some versions refuse more.
        le=32 * 1024 * 1024,
        description="Bytes from which the C allocator maps a block of its own instead of "
        "using the heap, set when the relay starts: the process keeps up to its peak heap "
        "until the relay goes idle after publishing and trims; 0 leaves the allocator's "
        "defaults and never trims (coordinator/heap.py, docs/relay.md).",
    )
    malloc_trim_threshold: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        le=2**31 - 1,
        description="Bytes of freed heap top the allocator keeps on each free instead of "
        "returning them, set with malloc_mmap_threshold; not a bound on what the process "
        "keeps (coordinator/heap.py).",
    )
    gc_threshold: int = Field(
        default=50_000,
        ge=1,
        # CPython refuses thresholds of 2**31 and over: every round would fail.
        le=10_000_000,
        description="Allocations between two collections of the garbage collector's "
        "youngest generation while rounds run (CPython's default 700 costs the relay about "
        "a quarter of its CPU; docs/relay.md).",
    )
    publish_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Bound on one batch's sends and acknowledgements; unacknowledged rows retry.",
    )
    stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Watchdog: recreate the producer after this long without progress.",
    )
    producer_stop_timeout_s: float = Field(
        default=5.0, gt=0, description="Bound on closing a producer; a hung one is abandoned."
    )
    backoff_initial_s: float = Field(
        default=0.2, gt=0, description="First pause after a failed batch (doubles, with jitter)."
    )
    backoff_max_s: float = Field(default=10.0, gt=0, description="Longest pause between retries.")


class ServeSettings(BaseSettings):
    """`retention serve`: HTTP binding, scheduler timing, shutdown and health bounds."""

    model_config = SettingsConfigDict(env_prefix="RETENTION_SERVE_", extra="ignore")

    host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP API binds to (0.0.0.0 in containers).",
    )
    misfire_grace_s: float = Field(
        default=3600.0,
        ge=0,
        description="A fire missed by downtime runs at start if it is at most this old; "
        "older misses are recorded, not replayed.",
    )
    tick_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the scheduler checks leadership and cron."
    )
    gauges_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often every replica recomputes the database-derived gauges "
        "(oldest unprocessed row, last successful run).",
    )
    drain_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="After a run `serve` starts, how long it keeps publishing the run's "
        "events before leaving the rest to the always-running relay.",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="On SIGTERM/SIGINT, how long the current run, batch and ack commit may "
        "take before the remaining tasks are cancelled.",
    )
    health_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Bound on each /healthz check (database, Kafka, the tracker's types).",
    )
    erasure_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often erasure requests' statuses move (completion, released holds) "
        "and their gauges are refreshed.",
    )
    verify_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="How often policies with `verify_sample` have completed deletions "
        "sampled for verification (SPEC §12).",
    )
    republish_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a replica looks for a queued run re-send "
        "(`POST /v1/runs/{id}/republish`) when it has none.",
    )
    republish_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a replica's claim on a run re-send lasts without renewal: "
        "after a crash another replica takes the job over once it runs out.",
    )
    topic_partitions: int = Field(
        default=6, ge=1, description="Partitions of each topic `serve` creates when missing."
    )
    topic_replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of the topics `serve` creates."
    )
    upkeep_interval_s: float = Field(
        default=86400.0,
        gt=0,
        description="How often the leader signs and publishes an audit-chain head and prunes "
        "the coordinator's own tables past their retention (SPEC §13).",
    )


class NotifySettings(BaseSettings):
    """Webhook notifications (`RETENTION_NOTIFY_*`); the webhooks are in
    `RETENTION_WEBHOOKS_FILE`."""

    model_config = SettingsConfigDict(env_prefix="RETENTION_NOTIFY_", extra="ignore")

    interval_s: float = Field(
        default=30.0, gt=0, description="Pause between passes (find what is new, post what is due)."
    )
    lookback_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Requests completed or due longer ago than this are not announced (a first "
        "start does not replay history).",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Bound on one POST.")
    batch_size: int = Field(
        default=100, ge=1, le=5000, description="Deliveries posted (concurrently) per batch."
    )
    backoff_initial_s: float = Field(
        default=30.0, gt=0, description="Wait before retrying a failed delivery (doubles)."
    )
    backoff_max_s: float = Field(
        default=3600.0, gt=0, description="Longest wait between retries; retries never stop."
    )
    signature_failure_threshold: int = Field(
        default=10,
        ge=1,
        description="Acks rejected for a bad signature within the window that make a "
        "`signature_failures` notification (at most one per UTC hour).",
    )
    signature_failure_window_s: float = Field(
        default=3600.0, gt=0, description="The window `signature_failure_threshold` counts in."
    )


EVIDENCE_RETENTION_DAYS = 6 * 365.0
"""SPEC §13: evidence (ledger, audit) is kept 6 years."""


class Settings(BaseSettings):
    """Everything the coordinator needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTION_",
        extra="ignore",
        populate_by_name=True,
        # Errors never echo the input: it may be a secret (a database URL, a key).
        hide_input_in_errors=True,
    )

    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        validation_alias=AliasChoices("database_url", "RETENTION_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL URL of the coordinator's database (plain postgresql:// accepted).",
    )
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings,
        description="Kafka connection and topics (RETENTION_KAFKA_* variables).",
    )
    relay: RelaySettings = Field(
        default_factory=RelaySettings,
        description="Outbox relay tuning (RETENTION_RELAY_* variables).",
    )
    policies: Path | None = Field(
        default=None, description="Path of the policy YAML file (or --policies)."
    )
    hash_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Key of the `hash` anonymize strategy (HMAC-SHA256); required to use it.",
    )
    tracker: TrackerSettings = Field(
        default_factory=TrackerSettings,
        description="Completion tracker (RETENTION_TRACKER_* variables).",
    )
    hook_modules: str = Field(
        default="",
        description="Comma-separated modules (with their submodules) a policy's "
        "`before_purge` may name, besides the policy file's own Python package; any "
        "other is refused before it is imported.",
    )
    http_port: int = Field(default=8080, ge=1, le=65535, description="Port of `retention serve`.")
    cli_lock_timeout_s: float = Field(
        default=30.0,
        ge=0,
        # PostgreSQL's lock_timeout is an int of milliseconds.
        le=2_147_483,
        description="How long a one-shot `retention` command (`holds create`, `acks waive`, "
        "...) waits for a lock, such as the hold lock or the audit chain lock, before it "
        "gives up, naming the lock and its holder; 0: without bound. Not `serve`, `relay`, "
        "`run` or `db`, which wait as long as it takes.",
    )
    api_tokens_file: Path | None = Field(
        default=None,
        description="YAML file of the HTTP API's named, scoped tokens (SHA-256 hashes; "
        "`retention tokens create`). Without it every /v1 route answers 503.",
    )
    ui_secret_file: Path | None = Field(
        default=None,
        description="File whose bytes sign the console's session cookies (32 bytes or more); "
        "without it a secret is generated at start and sessions end with the process.",
    )
    ui_session_hours: float = Field(
        default=8.0, gt=0, le=720, description="How long a console sign-in lasts."
    )
    webhooks_file: Path | None = Field(
        default=None,
        description="YAML file of webhooks to notify (url, events, HMAC secret); without it "
        "nothing is notified.",
    )
    notify: NotifySettings = Field(
        default_factory=NotifySettings,
        description="Webhook delivery (RETENTION_NOTIFY_* variables).",
    )
    purge_batches_in_flight: int = Field(
        default=2,
        ge=1,
        le=2,
        description="Batches of a delete policy's run in flight at once, each its own "
        "transaction on its own connection: the next one deletes while this one records "
        "itself and commits (docs/policies.md); 1: one after the other.",
    )
    schedule: str = Field(
        default="0 3 * * *",
        description="Cron expression (UTC) of the global run; policies with their own "
        "`schedule` run on theirs instead.",
    )
    serve: ServeSettings = Field(
        default_factory=ServeSettings,
        description="`retention serve` (RETENTION_SERVE_* variables).",
    )
    signatures: SignatureSettings = Field(
        default_factory=SignatureSettings,
        description="Signing key and RETENTION_SIGNATURES (SPEC §9).",
    )
    outbox_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Pruning deletes the outbox rows of events completed more than this many "
        "days ago, and keeps their entity ids in other evidence only as HMACs; rows of "
        "events not completed are never pruned.",
    )
    ack_ledger_retention_days: float = Field(
        default=2192.0,
        gt=0,
        description="Pruning deletes ack ledger rows received more than this many days ago "
        "whose event is completed (6 years by default).",
    )
    event_status_retention_days: float = Field(
        default=2192.0,
        gt=0,
        description="Pruning deletes the status and expected acks of events completed more "
        "than this many days ago; at least the outbox's and the ack ledger's retention.",
    )
    audit_retention_days: float = Field(
        default=2192.0,
        gt=0,
        description="Pruning deletes audit rows older than this many days and than every "
        "open event, leaving signed checkpoints in their place.",
    )
    erasure_default_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Days an erasure request under regulation `other` has (extended: twice).",
    )

    suppression_pepper_file: Path | None = Field(
        default=None,
        description="File of the pepper (`retention keys generate --pepper --out DIR`) the "
        "suppression list's keys are HMACs under (SPEC §12). Unset: erased entities are not "
        "listed on the erased topic, and old evidence keeps entity ids in clear. Past the "
        "outbox retention, evidence keeps entity ids as HMAC-SHA256 of `type:id` under it. "
        "Services need the same file for `is_erased`.",
    )
    suppression_retention_days: float = Field(
        default=EVIDENCE_RETENTION_DAYS,
        gt=0,
        description="Days an erased entity stays on the suppression list (default: the "
        "evidence retention, 6 years); then a tombstone removes it.",
    )
    kek_file: Path | None = Field(
        default=None,
        description="File of the local key-encryption key that wraps archive data keys "
        "(`retention keys generate --kek --out DIR`); required by archive and restore_window "
        "policies.",
    )
    keystore_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL of the key store of wrapped data keys. Unset: the "
        "coordinator's own database, so its backups hold the keys too and crypto-shredding "
        "only reaches them once they expire (docs/operations.md).",
    )

    backup_retention: timedelta | None = Field(
        default=None,
        description="How long backups of the data's database are kept (`35d`): certificates, "
        "request reports and GET /v1/policies state when backups holding deleted data "
        "expire (SPEC §12). Unset: they say it is unknown.",
    )
    keystore_backup_retention: timedelta | None = Field(
        default=None,
        description="How long backups of the key store (RETENTION_KEYSTORE_URL) are kept: "
        "a destroyed data key is in no backup once this has passed (the crypto-shredding "
        "horizon). Without a separate key store, the data's backup retention is the horizon.",
    )

    @field_validator("backup_retention", "keystore_backup_retention", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_duration(value) if value.strip() else None
        return value

    def own_retention(self) -> Retention:
        """How long each of the coordinator's own tables keeps its rows."""
        return Retention(
            outbox=timedelta(days=self.outbox_retention_days),
            ack_ledger=timedelta(days=self.ack_ledger_retention_days),
            event_status=timedelta(days=self.event_status_retention_days),
            audit=timedelta(days=self.audit_retention_days),
        )

    def allowed_hook_modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.hook_modules.split(",") if m.strip())

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return validate_cron(value)

    @model_validator(mode="after")
    def _status_outlives_what_needs_it(self) -> Self:
        # Outbox and ledger rows are pruned on their event's `completed` status: without
        # it an outbox row looks untracked (kept forever, holding back audit pruning) and
        # a ledger row's event looks unknown (kept forever).
        shortest = max(self.outbox_retention_days, self.ack_ledger_retention_days)
        if self.event_status_retention_days < shortest:
            raise ValueError(
                "RETENTION_EVENT_STATUS_RETENTION_DAYS must be at least the outbox's and the "
                "ack ledger's retention"
            )
        return self

    @model_validator(mode="after")
    def _coordinator_client_id(self) -> Self:
        self.kafka = self.kafka.for_client(COORDINATOR_CLIENT_ID)
        return self
