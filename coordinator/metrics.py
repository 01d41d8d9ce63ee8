"""The coordinator's Prometheus metrics (SPEC §8), built on an injected registry.

Labels are bounded: policy, action, service and status names — never entity ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
_COMPLETION_BUCKETS = (1, 10, 60, 300, 1800, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)


class Metrics:
    """Every metric the coordinator exports; one instance per registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_processed = Counter(
            "retention_records_processed",
            "Rows deleted, anonymized or archived locally.",
            ["policy", "action"],
            registry=r,
        )
        self.records_held = Counter(
            "retention_records_held",
            "Due rows skipped because an active legal hold covers them.",
            ["policy"],
            registry=r,
        )
        self.run_duration = Histogram(
            "retention_run_duration_seconds",
            "Duration of one policy's execution within a run.",
            ["policy"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.oldest_unprocessed = Gauge(
            "retention_oldest_unprocessed_days",
            "Age in days of the oldest row that should already be gone (held rows excluded).",
            ["policy"],
            registry=r,
        )
        self.events_published = Counter(
            "retention_events_published",
            "RetentionEvents published to the events topic.",
            ["policy"],
            registry=r,
        )
        self.acks = Counter(
            "retention_acks",
            "Acknowledgements accepted into the ledger.",
            ["service", "status"],
            registry=r,
        )
        self.acks_rejected = Counter(
            "retention_acks_rejected",
            "Acknowledgements refused (unknown event, unexpected service, malformed).",
            ["reason"],
            registry=r,
        )
        self.service_drift = Gauge(
            "retention_service_drift",
            "1 while a service's registration differs from its declaration (or it is not "
            "declared, or declared but never registered); 0 when they agree.",
            ["service"],
            registry=r,
        )
        self.unsigned_records = Counter(
            "retention_unsigned_records",
            "Unsigned records accepted under RETENTION_SIGNATURES=permissive.",
            ["topic"],
            registry=r,
        )
        self.registrations_rejected = Counter(
            "retention_registrations_rejected",
            "Registrations ignored: bad signature, undeclared service or malformed.",
            ["reason"],
            registry=r,
        )
        self.tracker_types_missing = Gauge(
            "retention_tracker_types_missing",
            "The tracker's own database types missing (a database not upgraded: no ack is "
            "recorded until `retention db upgrade`); set by each /healthz and by the tracker.",
            registry=r,
        )
        self.pending_acks = Gauge(
            "retention_pending_acks",
            "Acknowledgements still expected from each service.",
            ["service"],
            registry=r,
        )
        self.resurrected_events = Gauge(
            "retention_resurrected_events",
            "Delete events this service still held data for when asked to verify (its ack "
            "still_present, the event resurrected), until a later delete completes them.",
            ["service"],
            registry=r,
        )
        self.overdue_events = Gauge(
            "retention_overdue_events",
            "Events past their deadline without this service's acknowledgement.",
            ["service"],
            registry=r,
        )
        self.completion_seconds = Histogram(
            "retention_event_completion_seconds",
            "Time from publication to the last expected acknowledgement.",
            ["policy"],
            buckets=_COMPLETION_BUCKETS,
            registry=r,
        )
        self.reminders_sent = Counter(
            "retention_reminders_sent",
            "Events re-published because an expected service had not acknowledged them.",
            ["policy"],
            registry=r,
        )
        self.notifications = Counter(
            "retention_notifications",
            "Webhook delivery attempts, by webhook (from the webhooks file) and outcome "
            "(delivered | failed).",
            ["webhook", "outcome"],
            registry=r,
        )
        self.notifications_oldest_pending = Gauge(
            "retention_notifications_oldest_pending_seconds",
            "Age of the oldest notification not yet delivered to this webhook (0: none waits).",
            ["webhook"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "retention_outbox_unpublished",
            "Outbox events not yet published (past the relay's watermark).",
            registry=r,
        )
        self.relay_producer_restarts = Counter(
            "retention_relay_producer_restarts",
            "Kafka producers the outbox relay's watchdog replaced after a stall.",
            registry=r,
        )
        self.last_successful_run = Gauge(
            "retention_last_successful_run_timestamp_seconds",
            "Unix time at which each policy last finished a run without errors.",
            ["policy"],
            registry=r,
        )
        self.scheduler_leader = Gauge(
            "retention_scheduler_leader",
            "1 on the replica that holds the scheduler's leader lock, 0 on the others.",
            registry=r,
        )
        self.erasure_requests = Gauge(
            "retention_erasure_requests",
            "Erasure requests per status.",
            ["status"],
            registry=r,
        )
        self.erasure_requests_overdue = Gauge(
            "retention_erasure_requests_overdue",
            "Erasure requests past their due date and neither completed nor rejected.",
            registry=r,
        )
        self.backup_retention = Gauge(
            "retention_backup_retention_days",
            "How long backups are kept (RETENTION_BACKUP_RETENTION for store=data; the key "
            "store's, the crypto-shredding horizon, for store=keys): the maximum deletion "
            "delay in backups. Absent when not set.",
            ["store"],
            registry=r,
        )
        self.policy_retention = Gauge(
            "retention_policy_retention_days",
            "Each loaded policy's retention period, so alerts can compare ages with it.",
            ["policy"],
            registry=r,
        )
