"""The host-network variant (deploy/compose/host_network.py) stays docker-compose.yml's stack.

`make compose-check` runs the variant; these tests hold it to the original: the same
services, commands, settings, start order and healthchecks, with only addresses, ports and
images changed, and nothing left that needs a bridge network.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.compose.host_network import LEFT_OUT, LOCAL_IMAGES, generate, own_ports
from tests.infra import ROOT

FIRST_PORT = 23000


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.mktemp("compose")
    counter = itertools.count(FIRST_PORT)
    generate(out, allocate=lambda: next(counter))
    return (
        yaml.safe_load((out / "compose.yml").read_text()),
        yaml.safe_load((out / "prometheus.yml").read_text()),
    )


def _original() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def test_same_services_commands_order_and_settings(generated: tuple[dict, dict]) -> None:
    variant, _ = generated
    original = _original()["services"]
    # No top-level `name:` (docker-compose 1.29 rejects it); anchors are expanded.
    assert set(variant) == {k for k in _original() if k != "name" and not k.startswith("x-")}
    assert variant.get("volumes") == _original().get("volumes")
    services = variant["services"]
    assert set(services) == set(original) - set(LEFT_OUT)
    for name, service in services.items():
        source = original[name]
        assert service["network_mode"] == "host", name
        assert "ports" not in service, name
        assert "build" not in service, name
        assert service["image"] == LOCAL_IMAGES[source["image"]], name
        assert service.get("depends_on") == source.get("depends_on"), name
        for key in ("restart", "stop_grace_period", "profiles"):
            assert service.get(key) == source.get(key), (name, key)
        assert ("healthcheck" in service) == ("healthcheck" in source), name
        if name != "prometheus":
            assert service.get("volumes") == source.get("volumes"), name
        if name != "prometheus":
            # Equal but for `service:port` addresses, which point at loopback ports.
            names = "|".join(map(re.escape, original))
            written = [
                re.sub(r"127\.0\.0\.1:\d+", "ADDRESS", a) for a in service.get("command", [])
            ]
            expected = [
                re.sub(rf"(?<![\w.-])(?:{names}):\d+", "ADDRESS", str(a))
                for a in source.get("command", [])
            ]
            assert written == expected, name
        added = {"PGPORT"} if name == "postgres" else set()
        assert set(service.get("environment") or {}) == set(source.get("environment") or {}) | added
        for key, value in (source.get("environment") or {}).items():
            if not re.search(r"\d|0\.0\.0\.0|://", str(value)):
                assert service["environment"][key] == value, (name, key)


def test_nothing_needs_a_bridge_or_collides(generated: tuple[dict, dict]) -> None:
    variant, prometheus = generated
    names = "|".join(map(re.escape, _original()["services"]))
    texts = _strings(variant) + _strings(prometheus)
    for text in texts:
        assert not re.search(rf"(?<![\w./-])({names}):\d", text), text
        assert "0.0.0.0" not in text, text  # noqa: S104 - the address that must be gone
    ports = [int(p) for t in texts for p in re.findall(r"127\.0\.0\.1:(\d+)", t)]
    assert ports
    assert all(p >= FIRST_PORT for p in ports)
    listened = {
        (name, port) for name, service in variant["services"].items() for port in own_ports(service)
    }
    by_port = {port for _, port in listened}
    assert len(by_port) == len(listened), "two services listen on one port"
    assert set(ports) <= by_port


def test_kafka_postgres_and_serve_agree_on_addresses(generated: tuple[dict, dict]) -> None:
    services = generated[0]["services"]
    kafka = services["kafka"]["environment"]
    internal = re.search(r"INTERNAL://([^,]+)", kafka["KAFKA_ADVERTISED_LISTENERS"])
    assert internal is not None
    assert f"INTERNAL://{internal[1]}" in kafka["KAFKA_LISTENERS"]
    controller = re.search(r"CONTROLLER://([^,]+)", kafka["KAFKA_LISTENERS"])
    assert controller is not None
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@{controller[1]}"
    pg_port = services["postgres"]["environment"]["PGPORT"]
    serve = services["serve"]
    for name, service in services.items():
        env = service.get("environment") or {}
        if "RETENTION_KAFKA_BOOTSTRAP_SERVERS" in env:
            assert env["RETENTION_KAFKA_BOOTSTRAP_SERVERS"] == internal[1], name
        for key in ("RETENTION_DATABASE_URL", "RETENTION_SERVICE_DATABASE_URL"):
            if key in env:
                assert f"@127.0.0.1:{pg_port}/" in env[key], (name, key)
    assert serve["environment"]["RETENTION_SERVE_HOST"] == "127.0.0.1"
    port = serve["environment"]["RETENTION_HTTP_PORT"]
    assert f"http://127.0.0.1:{port}/healthz" in serve["healthcheck"]["test"][-1]


def test_prometheus_scrapes_the_same_jobs_on_the_new_ports(generated: tuple[dict, dict]) -> None:
    variant, prometheus = generated
    services = variant["services"]
    original = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == original["rule_files"]

    def targets(config: dict[str, Any]) -> dict[str, list[str]]:
        return {
            job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
            for job in config["scrape_configs"]
        }

    def address(target: str) -> str:
        name, _ = target.split(":")
        env = services[name]["environment"]
        port = env.get("RETENTION_HTTP_PORT") or env["RETENTION_CONSUMER_METRICS_PORT"]
        return f"127.0.0.1:{port}"

    expected = {job: [address(t) for t in ts] for job, ts in targets(original).items()}
    assert targets(prometheus) == expected
    config_mount, alerts_mount = services["prometheus"]["volumes"]
    assert config_mount.endswith(":/etc/prometheus/prometheus.yml:ro")
    host_alerts = Path(alerts_mount.split(":")[0])
    assert host_alerts == ROOT / "deploy" / "prometheus" / "alerts.yml"
    listen = [a for a in services["prometheus"]["command"] if a.startswith("--web.listen")]
    assert listen
    assert listen[0].startswith("--web.listen-address=127.0.0.1:")


def test_local_images_are_the_ones_make_images_builds() -> None:
    built = subprocess.run(
        [str(ROOT / "deploy" / "images" / "build.sh"), "tags"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent"},
    )
    # `tags` needs no engine: it only names what `make images` builds.
    assert built.returncode == 0, built.stderr
    services = _original()["services"]
    assert set(LOCAL_IMAGES) == {s["image"] for n, s in services.items() if n not in LEFT_OUT}
    assert set(LOCAL_IMAGES.values()) == set(built.stdout.split())
