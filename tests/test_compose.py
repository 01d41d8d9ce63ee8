"""docker-compose.yml agrees with the settings defaults, so both stacks are interchangeable."""

from __future__ import annotations

import importlib
import importlib.util
import tomllib
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from consumer_sdk import ConsumerSettings
from coordinator.cli import app as cli_app
from coordinator.settings import RelaySettings, Settings, TrackerSettings
from schemas import DEFAULT_DATABASE_URL, KafkaSettings, async_database_url
from tests.infra import ROOT


def load_compose() -> dict[str, object]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_kafka_port_matches_default_bootstrap() -> None:
    services = load_compose()["services"]
    assert isinstance(services, dict)
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    default = KafkaSettings.model_fields["bootstrap_servers"].default
    host, port = default.split(":")
    assert f"{host}:{port}:{port}" in kafka["ports"]
    assert f"EXTERNAL://{default}" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "healthcheck" in kafka


def test_postgres_matches_default_database_url() -> None:
    services = load_compose()["services"]
    assert isinstance(services, dict)
    postgres = services["postgres"]
    url = urlsplit(DEFAULT_DATABASE_URL)
    env = postgres["environment"]
    assert postgres["image"] == "postgres:16"
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        url.username,
        url.password,
        url.path.lstrip("/"),
    )
    assert f"{url.hostname}:{url.port}:5432" in postgres["ports"]
    assert "healthcheck" in postgres


# --- the application services: relay and the three example services ----------------------

APP_SERVICES = ("migrate", "relay", "notifications", "preferences", "billing")
EXAMPLE_SERVICES = ("notifications", "preferences", "billing")


def _services() -> dict[str, Any]:
    services = load_compose()["services"]
    assert isinstance(services, dict)
    return services


def _env_names(model: type[BaseSettings]) -> set[str]:
    """The variables pydantic-settings reads for `model`'s own (non-nested) fields."""
    prefix = str(model.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings):
            continue  # a nested model: its own prefix, listed on its own
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str) and c.isupper()}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def settings_variables() -> set[str]:
    """Every RETENTION_* variable some settings model of ours reads."""
    models: list[type[BaseSettings]] = [
        Settings,
        KafkaSettings,
        RelaySettings,
        TrackerSettings,
        ConsumerSettings,
    ]
    return {n for m in models for n in _env_names(m) if n.startswith("RETENTION_")}


def test_settings_variables_are_derived_from_the_models() -> None:
    known = settings_variables()
    assert {
        "RETENTION_DATABASE_URL",
        "RETENTION_SERVICE_DATABASE_URL",
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS",
        "RETENTION_RELAY_BATCH_SIZE",
        "RETENTION_CONSUMER_MAX_ATTEMPTS",
    } <= known
    # Nested models are read through their own prefixes, not as RETENTION_KAFKA etc.
    assert not {"RETENTION_KAFKA", "RETENTION_RELAY", "RETENTION_TRACKER"} & known


def test_every_app_variable_is_a_setting_and_every_service_has_its_database() -> None:
    services, known = _services(), settings_variables()
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert set(env) <= known, f"{name}: unknown {sorted(set(env) - known)}"
        kafka = KafkaSettings(**{"bootstrap_servers": env["RETENTION_KAFKA_BOOTSTRAP_SERVERS"]})
        assert (
            f"INTERNAL://{kafka.bootstrap_servers}"
            in (services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
        )
    postgres = services["postgres"]["environment"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        coordinator = name in ("migrate", "relay")
        # The coordinator's database and a service's database are never mixed up.
        key = "RETENTION_DATABASE_URL" if coordinator else "RETENTION_SERVICE_DATABASE_URL"
        other = "RETENTION_SERVICE_DATABASE_URL" if coordinator else "RETENTION_DATABASE_URL"
        assert other not in env, name
        url = urlsplit(env[key])
        assert (url.hostname, url.port, url.username, url.password) == (
            "postgres",
            5432,
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        ), name
        async_database_url(env[key])  # a URL our code accepts
        if coordinator:
            assert url.path == f"/{postgres['POSTGRES_DB']}"
        else:
            assert url.path != f"/{postgres['POSTGRES_DB']}"


def test_app_commands_exist() -> None:
    services = _services()
    for name in APP_SERVICES:
        command = services[name]["command"]
        if command[0] == "retention":
            result = CliRunner().invoke(cli_app, [*command[1:], "--help"])
            assert result.exit_code == 0, (name, result.output)
        else:
            assert command[:2] == ["python", "-m"], name
            assert importlib.util.find_spec(f"{command[2]}.__main__") is not None, name
    assert [services[n]["command"][2] for n in EXAMPLE_SERVICES] == [
        f"services.{n}" for n in EXAMPLE_SERVICES
    ]
    health = services["relay"]["healthcheck"]["test"]
    assert health[:3] == ["CMD", "python", "-m"]
    assert importlib.util.find_spec(health[3]) is not None
    assert "main" in vars(importlib.import_module(health[3]))


def test_start_order_waits_for_health() -> None:
    services = _services()

    def waits_for(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert waits_for("migrate") == {"postgres": "service_healthy"}
    assert waits_for("relay") == {
        "migrate": "service_completed_successfully",
        "kafka": "service_healthy",
    }
    for name in EXAMPLE_SERVICES:
        assert waits_for(name) == {"postgres": "service_healthy", "relay": "service_healthy"}
    for name in ("kafka", "postgres", "relay"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["restart"] == "no"
    assert {services[n]["build"] for n in APP_SERVICES} == {"."}


def test_dockerfile_installs_every_shipped_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.split() for line in dockerfile.splitlines() if line and line[0] != "#"]
    assert ["FROM", "python:3.11-slim"] in lines
    copied = {source for parts in lines if parts[0] == "COPY" for source in parts[1:-1]}
    for source in copied:
        assert (ROOT / source).exists(), source
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert shipped <= copied
    assert pyproject["project"]["readme"] in copied
    assert "pip install ." in dockerfile
