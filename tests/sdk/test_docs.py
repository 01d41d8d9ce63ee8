"""docs/sdk.md documents every consumer setting and metric."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from consumer_sdk import ConsumerMetrics, ConsumerSettings
from tests.infra import ROOT

DOC = (ROOT / "docs" / "sdk.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    for name, field in ConsumerSettings.model_fields.items():
        choices = getattr(field.validation_alias, "choices", [])
        env = [c for c in choices if isinstance(c, str) and c.startswith("RETENTION_")]
        assert env, f"{name} has no RETENTION_ variable"
        assert f"| `{env[0]}` |" in DOC, f"{env[0]} missing from docs/sdk.md"


def test_every_metric_is_documented() -> None:
    metrics = ConsumerMetrics(CollectorRegistry())
    for family in metrics.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in DOC, f"{name} missing from docs/sdk.md"
