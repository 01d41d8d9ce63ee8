"""Backup lag (SPEC §12): the two backup retentions, the dates they give, and the gauge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from coordinator.copies.backups import BackupHorizon
from coordinator.policy.model import load_policies
from coordinator.serve import Service
from coordinator.settings import Settings
from tests.infra import ROOT

SEED = load_policies(ROOT / "tests" / "data" / "seed_policies.yaml")
AT = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_separate_key_store_has_its_own_shorter_horizon() -> None:
    settings = Settings(
        keystore_url="postgresql://k@localhost/keys",
        backup_retention="35d",
        keystore_backup_retention="7d",
    )
    horizon = BackupHorizon.of(settings)
    assert horizon.backups_expire_by(AT) == AT + timedelta(days=35)
    assert horizon.undecryptable_after(AT) == AT + timedelta(days=7)
    assert horizon.statement(AT) == "backups holding this data expire by 2027-01-05T00:00:00+00:00"
    assert horizon.settings_view() == {
        "backup_retention": "35d",
        "keystore_backup_retention": "7d",
        "separate_keystore": True,
    }


def test_without_a_key_store_the_keys_live_as_long_as_the_data_backups() -> None:
    # The keys are in the data's own backups: the key store's setting cannot shorten that.
    settings = Settings(backup_retention="P5W", keystore_backup_retention="7d")
    horizon = BackupHorizon.of(settings)
    assert horizon.undecryptable_after(AT) == AT + timedelta(days=35)


def test_unset_says_unknown_and_never_guesses() -> None:
    horizon = BackupHorizon.of(Settings())
    assert horizon.backups_expire_by(AT) is None
    assert horizon.undecryptable_after(AT) is None
    assert "RETENTION_BACKUP_RETENTION is not set" in horizon.statement(AT)


def test_serve_exports_the_retentions_as_a_gauge() -> None:
    registry = CollectorRegistry()
    settings = Settings(
        keystore_url="postgresql://k@localhost/keys",
        backup_retention="35d",
        keystore_backup_retention="36h",
    )
    Service(settings, SEED, registry=registry, port=0)
    value = registry.get_sample_value
    assert value("retention_backup_retention_days", {"store": "data"}) == 35
    assert value("retention_backup_retention_days", {"store": "keys"}) == 1.5

    unset = CollectorRegistry()
    Service(Settings(), SEED, registry=unset, port=0)
    assert unset.get_sample_value("retention_backup_retention_days", {"store": "data"}) is None
