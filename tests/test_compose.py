"""docker-compose.yml agrees with the settings defaults, so both stacks are interchangeable."""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml

from schemas import DEFAULT_DATABASE_URL, KafkaSettings
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
