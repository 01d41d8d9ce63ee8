"""The coordinator's settings, read from `RETENTION_*` variables (and `.env` files)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import DEFAULT_DATABASE_URL, KafkaSettings

__all__ = ["Settings"]


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
    http_port: int = Field(default=8080, ge=1, le=65535, description="Port of `retention serve`.")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token that HTTP write routes require."
    )
