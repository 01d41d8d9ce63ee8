"""The webhooks file (`RETENTION_WEBHOOKS_FILE`) and the signature each delivery carries.

The file is `{webhooks: [{name, url, events: [...], secret}]}`. `secret` is shared with the
receiver and signs every delivery: header `X-Retention-Signature: sha256=<hex>`, the
HMAC-SHA256 under the secret of `<X-Retention-Timestamp>.<body>`. Binding the timestamp
lets a receiver refuse old replays; the delivery id (`X-Retention-Delivery`) lets it drop
duplicates, which at-least-once delivery makes possible.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from coordinator import CoordinatorError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Kind",
    "Webhook",
    "WebhooksFileError",
    "load_webhooks",
    "sign",
]

SIGNATURE_HEADER = "X-Retention-Signature"
TIMESTAMP_HEADER = "X-Retention-Timestamp"
MAX_WEBHOOKS_FILE_BYTES = 1024 * 1024


class Kind(StrEnum):
    """What a notification is about."""

    REQUEST_COMPLETED = "request_completed"
    REQUEST_OVERDUE = "request_overdue"
    REQUEST_ON_HOLD = "request_on_hold"
    SERVICE_OVERDUE = "service_overdue"
    VERIFICATION_FOUND_DATA = "verification_found_data"
    SIGNATURE_FAILURES = "signature_failures"


class Webhook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]
    url: HttpUrl
    events: frozenset[Kind] = Field(min_length=1)
    secret: SecretStr = Field(min_length=16)

    @field_validator("url")
    @classmethod
    def _http_or_https(cls, url: HttpUrl) -> HttpUrl:
        if url.scheme not in ("http", "https"):
            raise ValueError("url must be http:// or https://")
        return url


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhooks: list[Webhook]


class WebhooksFileError(CoordinatorError):
    """The webhooks file is missing, too big or not valid; the message names no secret."""


def load_webhooks(path: Path) -> tuple[Webhook, ...]:
    try:
        if path.stat().st_size > MAX_WEBHOOKS_FILE_BYTES:
            raise WebhooksFileError(f"{path} is larger than {MAX_WEBHOOKS_FILE_BYTES} bytes")
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise WebhooksFileError(f"cannot read {path} ({type(exc).__name__})") from None
    except yaml.YAMLError:
        raise WebhooksFileError(f"{path} is not valid YAML") from None
    try:
        parsed = _File.model_validate(document)
    except ValidationError as exc:
        # Locations and messages only: the input may be a secret.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise WebhooksFileError(f"{path}: {problems}") from None
    names = [w.name for w in parsed.webhooks]
    if len(set(names)) != len(names):
        raise WebhooksFileError(f"{path}: webhook names must be unique")
    return tuple(parsed.webhooks)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Retention-Signature` value of one delivery."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"
