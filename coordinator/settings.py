"""The coordinator's settings, read from `RETENTION_*` variables (and `.env` files)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import DEFAULT_DATABASE_URL, KafkaSettings

__all__ = ["Settings", "TrackerSettings"]


class TrackerSettings(BaseSettings):
    """The completion tracker: its consumer group, batching and reminder schedule."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTION_TRACKER_", extra="ignore", populate_by_name=True
    )

    group_id: str = Field(
        default="retention.tracker", description="Consumer group of the acks consumer."
    )
    batch_size: int = Field(
        default=1000, ge=1, le=2000, description="Most acks applied in one transaction."
    )
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="Longest wait for acks before checking deadlines."
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
        default=3, ge=0, description="Re-publications per event before only escalation is left."
    )


class Settings(BaseSettings):
    """Everything the coordinator needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTION_", extra="ignore", populate_by_name=True
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
    http_port: int = Field(default=8080, ge=1, le=65535, description="Port of `retention serve`.")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token that HTTP write routes require."
    )
