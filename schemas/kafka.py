"""The one Kafka settings object, shared by the coordinator and the consumer SDK."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import DEFAULT_PREFIX, Topics

__all__ = ["DEFAULT_BOOTSTRAP_SERVERS", "KafkaSettings"]

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:19092"
"""Where `make infra-up` (and docker compose) expose the broker to the host."""


class KafkaSettings(BaseSettings):
    """Connection and topic settings, from `RETENTION_KAFKA_*` variables or keyword arguments."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTION_KAFKA_", extra="ignore", populate_by_name=True
    )

    bootstrap_servers: str = Field(
        default=DEFAULT_BOOTSTRAP_SERVERS,
        validation_alias=AliasChoices(
            "bootstrap_servers", "RETENTION_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
        description="Comma-separated host:port list of brokers.",
    )
    topic_prefix: str = Field(
        default=DEFAULT_PREFIX,
        description="Prefix of the four topics: <prefix>, <prefix>.acks, .services, .dlq.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism, with a SASL_* protocol."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle that signs the brokers' certificates."
    )
    client_id: str = Field(default="retention-fanout", description="Client id sent to brokers.")
    request_timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout.")

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client of ours shares."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs
