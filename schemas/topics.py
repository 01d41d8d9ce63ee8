"""Topic names: the product's topics, derived from one configurable prefix (SPEC §2, §11-§13)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "Topics", "service_group"]

DEFAULT_PREFIX = "data.retention"


@dataclass(frozen=True, slots=True)
class Topics:
    """The product's topics for one prefix; `Topics()` gives the defaults."""

    prefix: str = DEFAULT_PREFIX

    @property
    def events(self) -> str:
        return self.prefix

    @property
    def acks(self) -> str:
        return f"{self.prefix}.acks"

    @property
    def services(self) -> str:
        return f"{self.prefix}.services"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def holds(self) -> str:
        """Compacted, coordinator-signed: each held entity's current set of holds."""
        return f"{self.prefix}.holds"

    @property
    def erased(self) -> str:
        """The suppression list (SPEC §12): compacted, written by the coordinator only."""
        return f"{self.prefix}.erased"

    @property
    def audit(self) -> str:
        """Signed audit-chain heads and checkpoints (SPEC §13), compacted."""
        return f"{self.prefix}.audit"

    @property
    def compacted(self) -> tuple[str, ...]:
        """Topics keyed by what they describe, where only the latest record per key counts."""
        return (self.services, self.holds, self.erased, self.audit)

    def all(self) -> tuple[str, ...]:
        return (
            self.events,
            self.acks,
            self.services,
            self.dlq,
            self.holds,
            self.erased,
            self.audit,
        )


def service_group(service: str) -> str:
    """The consumer group a service reads the events topic in, unless it configures another
    (`RETENTION_CONSUMER_GROUP_ID`); a Faust app's id is its group."""
    return f"retention.{service}"
