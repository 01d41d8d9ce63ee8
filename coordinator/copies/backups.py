"""Backup lag (SPEC §12): how long deleted data outlives its deletion in backups.

Two retentions decide it. Backups of the data's database (`RETENTION_BACKUP_RETENTION`)
hold a deleted row until the last backup taken before the deletion expires. Sealed copies
(archive, vault) in those backups become unreadable earlier: once the subject's data key
is destroyed and no backup of the key store older than the destruction remains
(`RETENTION_KEYSTORE_BACKUP_RETENTION`; without a separate key store the keys are in the
data's own backups, so the data's retention is that horizon too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from coordinator.policy.durations import format_duration
from coordinator.settings import Settings

__all__ = ["BackupHorizon"]

UNKNOWN = "unknown: RETENTION_BACKUP_RETENTION is not set"


@dataclass(frozen=True, slots=True)
class BackupHorizon:
    data: timedelta | None
    """Retention of the data's database backups."""
    keys: timedelta | None
    """Retention of the backups that hold the data keys."""
    separate_keystore: bool

    @classmethod
    def of(cls, settings: Settings) -> BackupHorizon:
        separate = settings.keystore_url is not None
        keys = settings.keystore_backup_retention if separate else settings.backup_retention
        return cls(settings.backup_retention, keys, separate)

    def backups_expire_by(self, deleted_at: datetime | None) -> datetime | None:
        """When the last backup that still holds data deleted at `deleted_at` expires."""
        if deleted_at is None or self.data is None:
            return None
        return deleted_at + self.data

    def undecryptable_after(self, destroyed_at: datetime | None) -> datetime | None:
        """After this, no backup holds the data key destroyed at `destroyed_at`."""
        if destroyed_at is None or self.keys is None:
            return None
        return destroyed_at + self.keys

    def settings_view(self) -> dict[str, Any]:
        return {
            "backup_retention": format_duration(self.data) if self.data else None,
            "keystore_backup_retention": format_duration(self.keys) if self.keys else None,
            "separate_keystore": self.separate_keystore,
        }

    def statement(self, deleted_at: datetime | None) -> str:
        """The sentence a certificate carries about backups."""
        if self.data is None:
            return UNKNOWN
        expires = self.backups_expire_by(deleted_at)
        if expires is None:
            return f"backups are kept {format_duration(self.data)}; the deletion is not complete"
        return f"backups holding this data expire by {expires.isoformat()}"
