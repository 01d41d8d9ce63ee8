"""The one Kafka settings object, shared by the coordinator and the consumer SDK."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import AliasChoices, AliasGenerator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import DEFAULT_PREFIX, Topics

__all__ = [
    "DEFAULT_BOOTSTRAP_SERVERS",
    "DEFAULT_CLIENT_ID",
    "Compression",
    "KafkaSettings",
    "KafkaSettingsError",
    "SaslMechanism",
    "SecurityProtocol",
]

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:19092"
"""Where `make infra-up` (and docker compose) expose the broker to the host."""

DEFAULT_CLIENT_ID = "retention-fanout"
"""Client id of a client that names no service (benchmarks, tools)."""

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_ENV = "RETENTION_KAFKA_"
_TLS: frozenset[str] = frozenset({"SSL", "SASL_SSL"})
_SASL: frozenset[str] = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_SASL_FIELDS = ("sasl_mechanism", "sasl_username", "sasl_password")
_TLS_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


class KafkaSettingsError(ValueError):
    """Kafka settings that contradict each other (pydantic reports it as a `ValidationError`)
    or name an unusable file (raised when a client is built). The message names the
    variable (`RETENTION_KAFKA_*`) and never carries a secret."""


class KafkaSettings(BaseSettings):
    """Connection and topic settings, from `RETENTION_KAFKA_*` variables or keyword arguments."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV,
        extra="ignore",
        populate_by_name=True,
        # Errors name the variable (`RETENTION_KAFKA_SASL_MECHANISM`), whichever way the
        # value came in, and never echo the input: it may hold the SASL password.
        alias_generator=AliasGenerator(validation_alias=lambda name: f"{_ENV}{name.upper()}"),
        hide_input_in_errors=True,
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
        description="Prefix of the topics: <prefix>, <prefix>.acks, .services, .dlq, .holds, "
        ".erased, .audit.",
    )
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description="PLAINTEXT, SSL (TLS, optionally with a client certificate), "
        "SASL_PLAINTEXT or SASL_SSL.",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with a SASL_* protocol.",
    )
    sasl_username: str | None = Field(
        default=None, description="SASL user name (the client's principal)."
    )
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; never logged."
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM CA bundle that signs the brokers' certificates; default: the "
        "system's trust store.",
    )
    ssl_certfile: Path | None = Field(
        default=None,
        description="PEM client certificate chain for mutual TLS (may also hold the key).",
    )
    ssl_keyfile: Path | None = Field(
        default=None,
        description="PEM private key of the client certificate, if not in the certificate file.",
    )
    client_id: str | None = Field(
        default=None,
        description="Client id sent to brokers (quotas, broker logs); default: the service "
        f"name, `retention-coordinator` for the coordinator, else `{DEFAULT_CLIENT_ID}`.",
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    compression: Compression = Field(
        default="none",
        description="Codec of the record batches our producers write outside the relay "
        "(the SDK's acks and registrations, the tracker's reminders and DLQ records). "
        "`none` and `gzip` are the codecs every mainstream client reads without extra "
        "packages; docs/protocol.md has the measurements and what each client needs.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        protocol = f"{_ENV}SECURITY_PROTOCOL={self.security_protocol}"
        if self.security_protocol in _SASL:
            if missing := self._variables(_SASL_FIELDS, given=False):
                raise KafkaSettingsError(f"{protocol} needs {', '.join(missing)}")
        elif given := self._variables(_SASL_FIELDS, given=True):
            # Credentials without a SASL protocol are never sent: refuse rather than let an
            # operator believe the client authenticates.
            raise KafkaSettingsError(
                f"{', '.join(given)} set, but {protocol} sends no SASL credentials: "
                "use SASL_SSL (or SASL_PLAINTEXT)"
            )
        if self.security_protocol not in _TLS and (
            given := self._variables(_TLS_FIELDS, given=True)
        ):
            raise KafkaSettingsError(
                f"{', '.join(given)} set, but {protocol} does not use TLS: use SSL or SASL_SSL"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise KafkaSettingsError(f"{_ENV}SSL_KEYFILE needs {_ENV}SSL_CERTFILE")
        if self.client_id is not None and not self.client_id.strip():
            raise KafkaSettingsError(f"{_ENV}CLIENT_ID must not be blank")
        return self

    def _variables(self, names: tuple[str, ...], *, given: bool) -> list[str]:
        return [f"{_ENV}{n.upper()}" for n in names if (getattr(self, n) is not None) is given]

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def effective_client_id(self) -> str:
        return self.client_id or DEFAULT_CLIENT_ID

    def for_client(self, name: str) -> KafkaSettings:
        """These settings with `name` as the client id, unless one was configured."""
        if self.client_id is not None:
            return self
        return self.model_copy(update={"client_id": name})

    def environ(self) -> dict[str, str]:
        """These settings as `RETENTION_KAFKA_*` variables for a child process (the SASL
        password in clear: pass it only as an environment, never log it). The client id
        is left out: the child is another client and names itself."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None or name == "client_id":
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"{_ENV}{name.upper()}"] = str(value)
        return env

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every client of ours, or None without TLS.

        Built fresh on each call, so a rotated certificate file is read by the next client.
        """
        if self.security_protocol not in _TLS:
            return None
        cafile = _readable(self.ssl_cafile, "SSL_CAFILE")
        certfile = _readable(self.ssl_certfile, "SSL_CERTFILE")
        keyfile = _readable(self.ssl_keyfile, "SSL_KEYFILE")
        try:
            context = ssl.create_default_context(cafile=cafile)
        except ssl.SSLError as exc:
            raise KafkaSettingsError(
                f"{_ENV}SSL_CAFILE={cafile}: not a PEM CA bundle ({exc.reason or exc})"
            ) from None
        if certfile is not None:
            try:
                # No password: an encrypted key fails here instead of OpenSSL prompting for
                # one on a terminal that a service doesn't have.
                context.load_cert_chain(certfile, keyfile, password=b"")
            except ssl.SSLError as exc:
                raise KafkaSettingsError(
                    f"{_ENV}SSL_CERTFILE={certfile}"
                    + (f" / {_ENV}SSL_KEYFILE={keyfile}" if keyfile else "")
                    + ": no usable PEM certificate and unencrypted matching key "
                    + f"({exc.reason or exc})"
                ) from None
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client of ours shares (producers, consumers,
        admin clients). They hold the SASL password in clear: never log them."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.effective_client_id,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
        }
        if (context := self.ssl_context()) is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol in _SASL and self.sasl_password is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs

    def librdkafka_config(self) -> dict[str, Any]:
        """The same connection as `client_kwargs`, as librdkafka configuration (the relay's
        optional confluent-kafka producer): protocol, CA, client certificate, host-name
        check (librdkafka's default, like ours), SASL login. It holds the SASL password in
        clear: never log it."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.effective_client_id,
            "socket.timeout.ms": int(self.request_timeout_s * 1000),
        }
        if self.security_protocol in _TLS:
            # Checked as `ssl_context` checks them, with the same messages.
            cafile = _readable(self.ssl_cafile, "SSL_CAFILE")
            certfile = _readable(self.ssl_certfile, "SSL_CERTFILE")
            keyfile = _readable(self.ssl_keyfile, "SSL_KEYFILE")
            # Without a CA file, the system's trust store, as `ssl.create_default_context`.
            config["ssl.ca.location"] = cafile or "probe"
            if certfile is not None:
                config["ssl.certificate.location"] = certfile
                # A certificate file may hold the key too (`ssl_certfile`).
                config["ssl.key.location"] = keyfile or certfile
        if self.security_protocol in _SASL and self.sasl_password is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config

    def producer_kwargs(self) -> dict[str, Any]:
        """`client_kwargs` plus this codec: what every producer of ours but the relay's
        starts from (the relay has its own codec, `RETENTION_RELAY_COMPRESSION`)."""
        codec = None if self.compression == "none" else self.compression
        return {**self.client_kwargs(), "compression_type": codec}


def _readable(path: Path | None, setting: str) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise KafkaSettingsError(f"{_ENV}{setting}={path}: no such file")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise KafkaSettingsError(f"{_ENV}{setting}={path}: {exc.strerror}") from None
    return str(path)
