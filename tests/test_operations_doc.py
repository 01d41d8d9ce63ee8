"""docs/operations.md documents every coordinator setting and metric."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from coordinator.metrics import Metrics
from coordinator.settings import (
    NotifySettings,
    RelaySettings,
    ServeSettings,
    Settings,
    TrackerSettings,
)
from schemas import KafkaSettings
from tests.infra import ROOT

DOC = (ROOT / "docs" / "operations.md").read_text()


@pytest.mark.parametrize(
    "model",
    [Settings, KafkaSettings, ServeSettings, RelaySettings, TrackerSettings, NotifySettings],
)
def test_every_setting_is_in_the_settings_tables(model: type[BaseSettings]) -> None:
    prefix = model.model_config.get("env_prefix", "")
    for name, field in model.model_fields.items():
        if isinstance(field.default_factory, type):
            continue  # a nested section: its own table
        variable = (prefix + name).upper()
        assert f"| `{variable}` |" in DOC, f"{variable} missing from docs/operations.md"


def test_every_metric_is_documented() -> None:
    for family in Metrics(CollectorRegistry()).registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"| `{name}` |" in DOC, f"{name} missing from docs/operations.md"
