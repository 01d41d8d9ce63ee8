"""Every table the coordinator owns, in one SQLAlchemy `MetaData` (migrations mirror it)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

__all__ = [
    "ack_ledger",
    "anonymize_marks",
    "anonymized",
    "audit_checkpoints",
    "audit_link_seq",
    "audit_log",
    "data_keys",
    "erased_entities",
    "erasure_parts",
    "erasure_requests",
    "event_status",
    "expected_acks",
    "hold_topic_queue",
    "legal_hold_entities",
    "legal_holds",
    "metadata",
    "notifications",
    "outbox_batches",
    "outbox_cursors",
    "outbox_marks",
    "policy_results",
    "republish_jobs",
    "runs",
    "scheduler_fires",
    "service_registry",
    "vault",
    "verifications",
    "verify_answers",
    "verify_marks",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(name: str, *, nullable: bool = True, now: bool = False) -> Column[object]:
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if now else None,
    )


legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    _ts("created_at", nullable=False, now=True),
    _ts("expires_at"),
    _ts("released_at"),
    Column("released_by", Text),
    # When the hold's expiry was queued for the holds topic (an expiry changes the sets).
    _ts("expiry_queued_at"),
)

# The holds topic's outbox: entities whose set of active holds changed and is not yet
# published. Written in the transaction that changes a hold; the value published is the
# set at publication time, so one row per entity is enough (coordinator/purge/hold_topic.py).
hold_topic_queue = Table(
    "retention_hold_topic_queue",
    metadata,
    Column("entity_type", Text, primary_key=True),
    Column("entity_id", Text, primary_key=True),
    _ts("queued_at", nullable=False),
)

legal_hold_entities = Table(
    "legal_hold_entities",
    metadata,
    Column("hold_id", Text, ForeignKey("legal_holds.id"), primary_key=True),
    Column("entity_type", Text, primary_key=True),
    Column("entity_id", Text, primary_key=True),
    # The planner's NOT EXISTS probes by (entity_type, entity_id).
    Index(None, "entity_type", "entity_id", "hold_id"),
)

runs = Table(
    "retention_runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    _ts("started_at", nullable=False, now=True),
    _ts("finished_at"),
    Column("status", Text, nullable=False, server_default=text("'running'")),
    Column("trigger", Text, nullable=False, server_default=text("'cli'")),
    Column("forced", Boolean, nullable=False, server_default=text("false")),
    Column("dry_run", Boolean, nullable=False, server_default=text("false")),
)

policy_results = Table(
    "retention_policy_results",
    metadata,
    Column("run_id", Uuid, ForeignKey("retention_runs.id"), primary_key=True),
    Column("policy", Text, primary_key=True),
    Column("action", Text, nullable=False),
    Column("status", Text, nullable=False),
    # The policy's legal basis when it ran, for the report (the file may change later).
    Column("legal_basis", Text),
    Column("processed", BigInteger, nullable=False, server_default=text("0")),
    Column("held", BigInteger, nullable=False, server_default=text("0")),
    Column("events", BigInteger, nullable=False, server_default=text("0")),
    Column("duration_s", Float, nullable=False, server_default=text("0")),
    Column("oldest_unprocessed_days", Float),
    _ts("cutoff"),
    Column("errors", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _ts("started_at", nullable=False, now=True),
    _ts("finished_at"),
)

# Which rows an anonymize policy has already rewritten, and which fields it covered:
# the planner skips them, so a rerun neither rewrites a row nor publishes a second event.
# A policy that gains a field re-plans its old rows once (`fields @>` no longer holds).
anonymized = Table(
    "retention_anonymized",
    metadata,
    Column("policy", Text, primary_key=True),
    Column("entity_id", Text, primary_key=True),
    Column("fields", ARRAY(Text), nullable=False),
    Column("run_id", Uuid, nullable=False),
    _ts("anonymized_at", nullable=False),
)

# Per anonymize policy, the end of its anonymized prefix: every row whose key is at most
# `last_key` was anonymized (with the policy's fields or more) or held when the mark was
# set, so a run starts its keyset after it instead of re-walking (and row-locking) every
# row it ever anonymized. `cutoff` was that run's cutoff and `updated_at` its time: a
# row at or below the key with a newer timestamp, or under a hold ended since, sends the
# next run back to it. coordinator/purge/marks.py; migration 0008.
anonymize_marks = Table(
    "retention_anonymize_marks",
    metadata,
    Column("policy", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("last_key", Text, nullable=False),
    _ts("cutoff", nullable=False),
    _ts("updated_at", nullable=False),
)

# The transactional outbox: one row per purge batch, written in the batch's transaction,
# so its events exist exactly when the local purge committed. The relay expands a row into
# one event per entity (coordinator/outbox/events.py maps columns to event fields). `seq`
# is assigned under the audit chain's lock, which is held until commit, so seq order is
# commit order and "published up to seq N" (retention_outbox_marks) is a watermark with no
# gaps behind it. Event n (0-based) of a batch has the id retention_uuidv7_nth(id_base,
# id_first + n): time-ordered, and the same every time the batch is read
# (coordinator/outbox/lookup.py finds a batch from an event id through ix_…_ids).
# Partitioned by month on `created_at` (coordinator/evidence/partitions.py): the primary
# key must hold the partition key; seq is unique all the same. Pruning drops whole months.
outbox_batches = Table(
    "retention_outbox_batches",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id_base", Uuid, nullable=False),
    Column("id_first", BigInteger, nullable=False),
    Column("events", Integer, nullable=False),
    Column("run_id", Uuid),
    Column("policy", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("legal_basis", Text, nullable=False),
    Column("fields", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _ts("initiated_at", nullable=False),
    _ts("deadline", nullable=False),
    # SPEC §11: why the events exist, the erasure request behind them.
    Column("reason", Text, nullable=False, server_default=text("'retention_policy'")),
    Column("request_id", Uuid),
    # This and `subjects` stored with lz4 (migration 0029).
    Column("entity_ids", ARRAY(Text), nullable=False),
    # Whose row each entity was ("type:id"), alongside entity_ids; NULL when none names one.
    Column("subjects", ARRAY(Text)),
    Column("created_at", DateTime(timezone=True), primary_key=True, server_default=func.now()),
    # Not unique: a unique index must hold the partition key. The ids are unique anyway,
    # each batch drawing a fresh UUIDv7.
    Index("ix_retention_outbox_batches_ids", "id_base", "id_first"),
    Index(
        "ix_retention_outbox_batches_request_id",
        "request_id",
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    # `retention republish --run` pages through one run's batches in outbox order (0014).
    Index(
        "ix_retention_outbox_batches_run_id",
        "run_id",
        "seq",
        postgresql_where=text("run_id IS NOT NULL"),
    ),
    postgresql_partition_by="RANGE (created_at)",
)

# The relay's watermark: each row says every batch up to `up_to` was published (the
# broker acknowledged it) at `published_at`. One insert per relay round, never an update;
# the watermark is max(up_to), a batch's publication time the first mark covering it.
outbox_marks = Table(
    "retention_outbox_marks",
    metadata,
    Column("up_to", BigInteger, primary_key=True, autoincrement=False),
    _ts("published_at", nullable=False),
    Column("events", Integer, nullable=False),
)

# Where each reader of the outbox's seq order stands ('tracked': the tracker has followed
# every published batch up to `seq`).
outbox_cursors = Table(
    "retention_outbox_cursors",
    metadata,
    Column("name", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

# Append-only hash chain (see coordinator/evidence/audit.py); seq is assigned under a lock, not
# by a sequence, so gaps can only come from deletion — which verification reports.
# Partitioned by month on `at` (coordinator/evidence/partitions.py): the primary key must
# hold the partition key; seq is unique all the same.
audit_link_seq = Sequence("retention_audit_link_seq", metadata=metadata)
"""Where an ack batch draws its `audit_log.link` token (migration 0031)."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), primary_key=True),
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    # Stored with lz4 (migration 0029: SQLAlchemy cannot declare a column's compression).
    Column("data", JSONB, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    # An ack batch's token (migration 0031), drawn before the chain's lock: its ledger
    # rows and completed events name their entries by (link, action), not by seq.
    Column("link", BigInteger),
    Index(None, "action"),
    Index(None, "link", postgresql_where=text("link IS NOT NULL")),
    postgresql_partition_by="RANGE (at)",
)


# Signed marks in the chain (coordinator/evidence/checkpoints.py, SPEC §13): `head` is a
# verified chain head, `pruned` stands for rows first_seq..last_seq removed by pruning,
# `hash` being the hash of row last_seq. `record` is the signed bytes published to the
# audit topic, `signature` its signature header (null when signing is off).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("last_seq", BigInteger, primary_key=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("hash", Text, nullable=False),
    _ts("at", nullable=False),
    Column("record", LargeBinary, nullable=False),
    Column("signature", LargeBinary),
    _ts("published_at"),
    CheckConstraint("kind IN ('head', 'pruned')", name="ck_audit_checkpoints_kind"),
    CheckConstraint("first_seq <= last_seq", name="ck_audit_checkpoints_range"),
)


# --- Completion tracking (docs/tracking.md) ---------------------------------------------

# Who handles what, from the compacted services topic: one row per service, entity type
# and action. first_seen/last_seen are the registrations' own `registered_at` times, so
# "registered when the event was published" can be decided after the fact.
service_registry = Table(
    "retention_services",
    metadata,
    Column("service", Text, primary_key=True),
    Column("entity_type", Text, primary_key=True),
    Column("action", Text, primary_key=True),
    Column("sdk_version", Text, nullable=False),
    _ts("first_seen", nullable=False),
    _ts("last_seen", nullable=False),
    _ts("retired_at"),
    Index(None, "entity_type", "action"),
)

# One row per published event the tracker follows. It repeats the outbox's identifying
# columns so that evidence survives the outbox being pruned.
event_status = Table(
    "retention_event_status",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("policy", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    _ts("initiated_at", nullable=False),
    _ts("published_at", nullable=False),
    _ts("deadline", nullable=False),
    Column("state", Text, nullable=False, server_default=text("'pending'")),
    Column("expected", Integer, nullable=False),
    _ts("completed_at"),
    _ts("overdue_at"),
    Column("reminders_sent", Integer, nullable=False, server_default=text("0")),
    _ts("next_reminder_at"),
    _ts("tracked_at", nullable=False),
    _ts("updated_at", nullable=False),
    Column("tracked_audit_seq", BigInteger),
    Column("completed_audit_seq", BigInteger),
    # Set instead of completed_audit_seq by ack batches since migration 0031.
    Column("completed_audit_link", BigInteger),
    # When entity_id (here and in the ack ledger) became an HMAC (coordinator/evidence/).
    _ts("pseudonymised_at"),
    CheckConstraint(
        "state IN ('pending', 'completed', 'failed', 'overdue', 'resurrected', 'held')",
        name="ck_retention_event_status_state",
    ),
    Index(None, "entity_type", "entity_id"),
    Index(None, "published_at"),
    # Reminders and deadline escalation scan only events that are still open.
    Index(
        "ix_retention_event_status_open",
        "next_reminder_at",
        postgresql_where=text("state <> 'completed'"),
    ),
    # The overdue gauge starts from the overdue events, which are few (migration 0007).
    Index(
        "ix_retention_event_status_overdue",
        "event_id",
        postgresql_where=text("state = 'overdue'"),
    ),
    # Escalation reads only open events past their deadline (0026): a range of this
    # index, not every open event.
    Index(
        "ix_retention_event_status_open_deadline",
        "deadline",
        postgresql_where=text("state IN ('pending', 'failed')"),
    ),
    # The verify sampler's keyset: a policy's completed deletions in completion order.
    Index(
        "ix_retention_event_status_completed_deletions",
        "policy",
        "completed_at",
        "event_id",
        postgresql_where=text("state = 'completed' AND event_type = 'delete'"),
    ),
)

# The expected acknowledgers of each event (snapshot at publication) and where each stands.
# No foreign key to event_status (0028): each writer writes or locks the event's status
# row in the same statement or transaction, and pruning deletes both together; the key's
# check was a quarter of the tracking pass's database CPU (docs/tracking.md).
expected_acks = Table(
    "retention_expected_acks",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("service", Text, primary_key=True),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("records_affected", BigInteger),
    Column("attempt", Integer),
    Column("detail", Text),
    _ts("acknowledged_at"),
    _ts("first_ack_at"),
    Column("acks_received", Integer, nullable=False, server_default=text("0")),
    # True when the service was registered in time but reached the tracker's registry
    # only after the snapshot; its first ack added it (docs/tracking.md).
    Column("joined_late", Boolean, nullable=False, server_default=text("false")),
    # Who waived this acknowledgement (`acks waive`, `services retire`); `detail` says why.
    Column("waived_by", Text),
    # This service's own deadline, fixed at the snapshot from its declared
    # `completion_deadline`; NULL: the event's deadline (tracking/deadlines.ack_deadline).
    _ts("deadline"),
    CheckConstraint(
        "status IN ('pending', 'completed', 'not_found', 'failed', 'waived', 'held', "
        "'still_present')",
        name="ck_retention_expected_acks_status",
    ),
    # The pending/overdue gauges count only what is still open, per service.
    Index(
        "ix_retention_expected_acks_open",
        "service",
        postgresql_where=text("status IN ('pending', 'failed')"),
    ),
    # Escalation finds open acks past a deadline of their own without scanning the rest.
    Index(
        "ix_retention_expected_acks_own_deadline",
        "deadline",
        postgresql_where=text("deadline IS NOT NULL AND status IN ('pending', 'failed')"),
    ),
    # Released holds are looked for among the `held` acks only, in event order (0026).
    Index(
        "ix_retention_expected_acks_held",
        "event_id",
        postgresql_where=text("status = 'held'"),
    ),
    # The resurrected gauge reads only reopened acknowledgements, which are few (0016).
    Index(
        "ix_retention_expected_acks_still_present",
        "service",
        postgresql_where=text("status = 'still_present'"),
    ),
)

# Every ack record consumed, accepted or rejected. (topic, partition, offset) makes a
# redelivered record a no-op; the partial unique index makes a re-sent ack one.
# Partitioned by month on `event_at` (coordinator/evidence/partitions.py, `LEDGER`): the
# minting time of the event the record names, read from its UUIDv7 id, or the epoch for
# a record naming none (or an id minted after it arrived). Derived from the record alone,
# it is the same on every delivery, so both unique keys can hold it as a partition key
# must: the accepted ack's key is the event's, the record's is the record's. Pruning
# drops a month once its events are all completed and past the retention.
ack_ledger = Table(
    "retention_ack_ledger",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _ts("received_at", nullable=False),
    Column("kafka_topic", Text, nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("event_id", Uuid),
    Column("service", Text),
    Column("entity_type", Text),
    Column("entity_id", Text),
    Column("status", Text),
    Column("records_affected", BigInteger),
    Column("attempt", Integer),
    Column("detail", Text),
    _ts("acknowledged_at"),
    Column("accepted", Boolean, nullable=False),
    Column("reject_reason", Text),
    Column("audit_seq", BigInteger),
    # Set instead of audit_seq by ack batches since migration 0031 (`audit_log.link`).
    Column("audit_link", BigInteger),
    # The id of the service key whose signature verified (SPEC §9), for certificates.
    Column("key_id", Text),
    Column("event_at", DateTime(timezone=True), primary_key=True),
    UniqueConstraint(
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "event_at",
        name="uq_retention_ack_ledger_record",
    ),
    Index(
        "uq_retention_ack_ledger_ack",
        "event_id",
        "service",
        "attempt",
        "status",
        "event_at",
        unique=True,
        postgresql_where=text("accepted"),
    ),
    # Accepted acks are found by event through the unique index above; only rejected
    # ones are looked up by event (entity timeline) and by time (report): few rows.
    Index(
        "ix_retention_ack_ledger_rejected_event_id",
        "event_id",
        postgresql_where=text("NOT accepted"),
    ),
    Index(
        "ix_retention_ack_ledger_rejected_received_at",
        "received_at",
        postgresql_where=text("NOT accepted"),
    ),
    postgresql_partition_by="RANGE (event_at)",
)

# One row per cron fire time the leader dealt with; the primary key makes a fire happen
# at most once even if two schedulers briefly both believe they lead.
scheduler_fires = Table(
    "scheduler_fires",
    metadata,
    Column("schedule", Text, primary_key=True),
    Column("fire_at", DateTime(timezone=True), primary_key=True),
    Column("status", Text, nullable=False),
    Column("node", Text, nullable=False),
    _ts("recorded_at", nullable=False, now=True),
    _ts("finished_at"),
    Column("detail", Text, nullable=False, server_default=text("''")),
)


# --- Erasure requests (SPEC §11; coordinator/erasure/) ----------------------------------

erasure_requests = Table(
    "erasure_requests",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("subject_type", Text, nullable=False),
    Column("subject_id", Text, nullable=False),
    Column("regulation", Text, nullable=False),
    Column("reference", Text),
    Column("status", Text, nullable=False, server_default=text("'received'")),
    _ts("received_at", nullable=False),
    _ts("due_at", nullable=False),
    _ts("created_at", nullable=False),
    Column("created_by", Text, nullable=False),
    # The latest execution's run (retention_runs, trigger erasure_request).
    Column("run_id", Uuid),
    _ts("extended_at"),
    Column("extension_reason", Text),
    _ts("local_done_at"),
    _ts("completed_at"),
    _ts("rejected_at"),
    Column("rejected_by", Text),
    Column("rejection_reason", Text),
    # Names of the holds that kept some of the subject's rows (status on_hold).
    Column("holds", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    CheckConstraint(
        "status IN ('received', 'in_progress', 'on_hold', 'completed', 'rejected')",
        name="ck_erasure_requests_status",
    ),
    CheckConstraint(
        "regulation IN ('gdpr', 'ccpa', 'other')", name="ck_erasure_requests_regulation"
    ),
    UniqueConstraint("reference", name="uq_erasure_requests_reference"),
    Index(None, "subject_type", "subject_id"),
    # The status mover and the overdue gauge look only at open requests.
    Index(
        "ix_erasure_requests_open",
        "due_at",
        postgresql_where=text("status NOT IN ('completed', 'rejected')"),
    ),
)

# What a request did per policy: rows acted on (or exempt, or held), with the action.
erasure_parts = Table(
    "erasure_request_parts",
    metadata,
    Column(
        "request_id",
        Uuid,
        ForeignKey("erasure_requests.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("policy", Text, primary_key=True),
    Column("table_name", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("rows", BigInteger, nullable=False, server_default=text("0")),
    Column("held", BigInteger, nullable=False, server_default=text("0")),
    Column("events", BigInteger, nullable=False, server_default=text("0")),
    Column("archived_copies_deleted", BigInteger, nullable=False, server_default=text("0")),
    # Archived copies made unreadable by destroying the subject's data key (SPEC §12).
    Column("archived_copies_shredded", BigInteger, nullable=False, server_default=text("0")),
    Column("shredded_key_id", Uuid),
    Column("legal_basis", Text, nullable=False),
    Column("exemption_basis", Text),
    Column("detail", Text, nullable=False, server_default=text("''")),
    _ts("done_at"),
    CheckConstraint(
        "outcome IN ('pending', 'done', 'exempt', 'superseded', 'error')",
        name="ck_erasure_request_parts_outcome",
    ),
)

# The key store (SPEC §12): data keys, wrapped by the KEK, one per subject (or entity).
# It may live in another database (RETENTION_KEYSTORE_URL); `retention keys init-store`
# creates it there. Destroying a key deletes its row: nothing else holds the key.
data_keys = Table(
    "retention_data_keys",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("key_id", Uuid, nullable=False, unique=True),
    Column("kek_id", Text, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    _ts("created_at", nullable=False, now=True),
)

# Webhook notifications (coordinator/operations/notify/): one row per (webhook, notification), the
# outbox the deliverer posts from until the receiver answers 2xx. `key` names what is
# notified (`request_completed:<id>`, `service_overdue:<service>:<day>`), so deriving the
# same notification again inserts nothing.
notifications = Table(
    "retention_notifications",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("webhook", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    _ts("created_at", nullable=False),
    _ts("next_attempt_at", nullable=False),
    _ts("last_attempt_at"),
    Column("last_error", Text),
    _ts("delivered_at"),
    UniqueConstraint("webhook", "key"),
    CheckConstraint(
        "status IN ('pending', 'delivered', 'dropped')",
        name="ck_retention_notifications_status",
    ),
    # The deliverer scans only what is still to be sent.
    Index(
        "ix_retention_notifications_due",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
    ),
)


# Background re-sends of a whole run (coordinator/operations/republish_jobs.py): queued by
# `POST /v1/runs/{id}/republish`, worked off by any `serve` replica that claims the row
# (its lease runs out if that replica dies, and another takes the job again).
republish_jobs = Table(
    "retention_republish_jobs",
    metadata,
    Column("job_id", Uuid, primary_key=True),
    Column("run_id", Uuid, nullable=False),
    Column("service", Text),
    Column("actor", Text, nullable=False),
    Column("state", Text, nullable=False, server_default=text("'queued'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("sent", Integer, nullable=False, server_default=text("0")),
    Column("held", Integer, nullable=False, server_default=text("0")),
    Column("error", Text),
    _ts("created_at", nullable=False),
    _ts("started_at"),
    _ts("finished_at"),
    _ts("lease_until"),
    CheckConstraint(
        "state IN ('queued', 'running', 'done', 'failed')",
        name="ck_retention_republish_jobs_state",
    ),
    # Claiming reads only open jobs; pruning only finished ones.
    Index(
        "ix_retention_republish_jobs_open",
        "created_at",
        postgresql_where=text("state IN ('queued', 'running')"),
    ),
    Index(
        "ix_retention_republish_jobs_finished",
        "finished_at",
        postgresql_where=text("finished_at IS NOT NULL"),
    ),
)

# --- Verification (SPEC §12; coordinator/copies/verification/) ---------------------------------

# One row per verify event: which entity, why (a sample or on demand) and who asked. The
# event itself goes out through the outbox like any other; the tracker never snapshots it.
verifications = Table(
    "retention_verifications",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    # The policy of the deletion verified (sample), or "on_demand".
    Column("policy", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("requested_by", Text, nullable=False),
    _ts("requested_at", nullable=False),
    # Its outbox batch's publication time, kept when `retention db prune` removes the
    # batch (NULL before: read from the outbox; migration 0032).
    _ts("published_at"),
    # When `entity_id` became its HMAC (SPEC §13), past the outbox retention.
    _ts("pseudonymised_at"),
    CheckConstraint(
        "trigger IN ('sample', 'on_demand')", name="ck_retention_verifications_trigger"
    ),
    Index(None, "entity_type", "entity_id"),
    # `retention report`'s verification section: the verify events asked since a date;
    # and `db prune`'s walk over the verifications past their retention.
    Index(None, "requested_at"),
    # The daily pseudonymisation's keyset: only the rows still in clear.
    Index(
        "ix_retention_verifications_unpseudonymised",
        "requested_at",
        "event_id",
        postgresql_where=text("pseudonymised_at IS NULL"),
    ),
)

# Each asked service's answer: `unsupported` (no verify handler) is shown as such and never
# counts as verified; `failed` means its count raised.
verify_answers = Table(
    "retention_verify_answers",
    metadata,
    Column(
        "event_id",
        Uuid,
        ForeignKey("retention_verifications.event_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("service", Text, primary_key=True),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("records_affected", BigInteger),
    Column("detail", Text),
    _ts("acknowledged_at"),
    CheckConstraint(
        "status IN ('pending', 'verified', 'still_present', 'unsupported', 'failed')",
        name="ck_retention_verify_answers_status",
    ),
    # `db prune`'s guard for open findings (copies/verification/prune.py `_settled`):
    # the few answers that found data still there, not a scan of every answer (0033).
    Index(
        "ix_retention_verify_answers_still_present",
        "event_id",
        "service",
        postgresql_where=text("status = 'still_present'"),
    ),
)

# Per policy, the completion time up to which sampling has looked: each completed deletion
# is considered for a sample once.
verify_marks = Table(
    "retention_verify_marks",
    metadata,
    Column("policy", Text, primary_key=True),
    _ts("completed_before", nullable=False),
    # With `completed_before`, the last deletion considered: the keyset to resume after
    # (NULL for a mark written before migration 0016: resume after the time alone).
    Column("event_id", Uuid),
)


# --- Suppression list (SPEC §12; coordinator/copies/suppression/) -------------------------------

# One row per erased entity, keyed by the HMAC the erased topic uses (never the clear id),
# written in the transaction that erases it: the publisher sends what is unpublished, so an
# entry survives any crash. Past `expires_at` a tombstone is sent and the row deleted.
erased_entities = Table(
    "retention_erased_entities",
    metadata,
    Column("key", Text, primary_key=True),
    _ts("erased_at", nullable=False),
    _ts("expires_at", nullable=False),
    _ts("published_at"),
    Index(
        "ix_retention_erased_entities_unpublished",
        "erased_at",
        postgresql_where=text("published_at IS NULL"),
    ),
    Index(None, "expires_at"),
)


# The restoration window (SPEC §12): rows a `restore_window` policy deleted, sealed under
# the same per-subject data keys as the archive (column `scope` names the key), until
# `expires_at`; `retention db prune` drops them after. Only what finds a row is clear.
vault = Table(
    "retention_vault",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Uuid, nullable=False),
    Column("policy", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("id_column", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("subject", Text),
    Column("scope", Text, nullable=False),
    Column("key_id", Uuid, nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    _ts("deleted_at", nullable=False),
    _ts("expires_at", nullable=False),
    _ts("restored_at"),
    Column("restored_by", Text),
    # restore walks one run's rows in id order; erasure requests find a key's rows.
    Index(None, "run_id", "id"),
    Index(None, "scope"),
    Index(None, "expires_at"),
)
