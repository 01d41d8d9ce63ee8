"""Signatures on the SDK's side (SPEC §9): verify events, sign acks and registrations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from consumer_sdk._internal.transport import Record
from consumer_sdk.metrics import ConsumerMetrics
from schemas.signing import (
    SignatureMode,
    SignatureSettings,
    Signer,
    Verdict,
    Verifier,
    accepts,
)

__all__ = ["Trust"]

log = structlog.get_logger("consumer_sdk")

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class Trust:
    """One consumer's mode, its own signing key, and the coordinator's public keys."""

    service: str
    mode: SignatureMode
    signer: Signer | None
    verifier: Verifier
    metrics: ConsumerMetrics

    @classmethod
    def from_settings(
        cls, service: str, settings: SignatureSettings, metrics: ConsumerMetrics
    ) -> Trust:
        """Raises `SigningKeyError` when `required` lacks a key: better at start than never
        acking anything."""
        trust = cls(
            service,
            settings.mode,
            settings.service_signer(),
            settings.coordinator_verifier(),
            metrics,
        )
        if settings.mode is SignatureMode.OFF:
            log.warning("signatures_off", service=service)
        return trust

    @classmethod
    def off(cls, service: str, metrics: ConsumerMetrics) -> Trust:
        """No verification, no signing: the in-memory test kit."""
        return cls(service, SignatureMode.OFF, None, Verifier(()), metrics)

    def sign(self, key: bytes | None, value: bytes | None) -> Headers:
        return [] if self.signer is None else self.signer.sign_record(key, value)

    def sign_batch(self, records: Sequence[tuple[bytes, bytes]]) -> list[Headers]:
        if self.signer is None:
            return [[] for _ in records]
        return self.signer.sign_batch(records)

    def refused(self, record: Record) -> str | None:
        """Why this event record must not reach a handler (None: it may)."""
        if self.mode is SignatureMode.OFF:
            return None
        checked = self.verifier.verify(record.key, record.value, record.headers)
        if checked.verdict is Verdict.VALID:
            return None  # nearly every record: `accepts` says so in every mode
        if checked.verdict is Verdict.UNSIGNED and self.mode is SignatureMode.PERMISSIVE:
            self.metrics.unsigned.labels(self.service, record.topic).inc()
        if accepts(self.mode, checked):
            return None
        return checked.verdict.value
