"""docker-compose.yml agrees with the settings defaults, so both stacks are interchangeable."""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from consumer_sdk import ConsumerSettings
from coordinator.api.tokens import load_tokens_file
from coordinator.cli import app as cli_app
from coordinator.policy.model import load_policies
from coordinator.settings import RelaySettings, ServeSettings, Settings, TrackerSettings
from demo import keys as demo_keys
from demo.seed import POLICIES as DEMO_POLICIES
from demo.seed import logins, users
from demo.seed_data import seed_metadata
from demo.tokens import main as tokens_main
from schemas import DEFAULT_DATABASE_URL, KafkaSettings, async_database_url
from schemas.signing import SignatureSettings
from services import EXAMPLES
from services.example import METRICS_PORT
from tests.declared import handles_of
from tests.infra import ROOT

APP_DOCKERFILE = ROOT / "deploy" / "images" / "app" / "Dockerfile"


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


# --- the application: migrate, seed, serve and the example services ----------------------

COORDINATOR = ("migrate", "serve")
EXAMPLE_SERVICES = tuple(e.name for e in EXAMPLES)
APP_SERVICES = ("migrate", "seed", "serve", *EXAMPLE_SERVICES)
OBSERVABILITY = ("prometheus", "grafana")


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
        ServeSettings,
        ConsumerSettings,
        SignatureSettings,
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
        "RETENTION_SERVE_HOST",
        "RETENTION_POLICIES",
        "RETENTION_API_TOKENS_FILE",
        "RETENTION_HTTP_PORT",
    } <= known
    # Nested models are read through their own prefixes, not as RETENTION_KAFKA etc.
    assert not {"RETENTION_KAFKA", "RETENTION_RELAY", "RETENTION_TRACKER", "RETENTION_SERVE"} & (
        known
    )


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
        keys = {"RETENTION_DATABASE_URL", "RETENTION_SERVICE_DATABASE_URL"} & set(env)
        # The coordinator's database and a service's database are never mixed up; only the
        # seed writes to both.
        if name in COORDINATOR:
            assert keys == {"RETENTION_DATABASE_URL"}, name
        elif name in EXAMPLE_SERVICES:
            assert keys == {"RETENTION_SERVICE_DATABASE_URL"}, name
        else:
            assert name == "seed"
            assert len(keys) == 2
        for key in keys:
            url = urlsplit(env[key])
            assert (url.hostname, url.port, url.username, url.password) == (
                "postgres",
                5432,
                postgres["POSTGRES_USER"],
                postgres["POSTGRES_PASSWORD"],
            ), name
            async_database_url(env[key])  # a URL our code accepts
            if key == "RETENTION_DATABASE_URL":
                assert url.path == f"/{postgres['POSTGRES_DB']}"
            else:
                assert url.path != f"/{postgres['POSTGRES_DB']}"
    # The seed fills exactly the databases the coordinator and the services use.
    seed = services["seed"]["environment"]
    for name in APP_SERVICES:
        for key, value in services[name]["environment"].items():
            if key in seed:
                assert value == seed[key], (name, key)


def _serve_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in _services()["serve"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    return Settings()


def test_serve_listens_on_all_interfaces_with_a_tokens_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _serve_settings(monkeypatch)
    serve = _services()["serve"]
    assert serve["command"] == ["retention", "serve"]
    assert settings.serve.host == "0.0.0.0"  # noqa: S104 - a container's published port
    assert settings.api_tokens_file is not None
    assert settings.hash_secret.get_secret_value()  # purchase_records hashes customer_name
    assert f"127.0.0.1:{settings.http_port}:{settings.http_port}" in serve["ports"]
    # The healthcheck asks this port's /healthz; urlopen raises (exit 1) on a 503.
    test = serve["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3]
    ast.parse(code)
    assert f"'http://127.0.0.1:{settings.http_port}/healthz'" in code
    assert "urllib.request.urlopen(" in code
    assert int(serve["stop_grace_period"].rstrip("s")) > settings.serve.shutdown_timeout_s


def _image_path(container_path: str) -> Path:
    """The build-context file the Dockerfile's last stage (the image) puts at `container_path`."""
    lines = [line.split() for line in APP_DOCKERFILE.read_text().splitlines() if line]
    lines = lines[max(i for i, parts in enumerate(lines) if parts[0] == "FROM") :]
    workdir = PurePosixPath(next(p[1] for p in lines if p[0] == "WORKDIR"))
    target = PurePosixPath(container_path)
    for parts in lines:
        if parts[0] == "COPY" and len(parts) == 3:
            destination = workdir / parts[2]
            if (ROOT / parts[1]).is_file():
                # A file copied into a directory (`COPY pyproject.toml ./`) keeps its name.
                destination /= PurePosixPath(parts[1]).name
            if target == destination or destination in target.parents:
                return ROOT / parts[1] / target.relative_to(destination)
    raise AssertionError(f"the Dockerfile copies nothing to {container_path}")


def test_the_policy_file_is_in_the_image_and_the_seed_creates_its_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _serve_settings(monkeypatch)
    assert settings.policies is not None
    source = _image_path(str(settings.policies))
    assert source == DEMO_POLICIES
    demo_keys.ensure_keys()  # its services' public keys are files `make demo` makes
    demo = load_policies(source)
    policies = demo.policies
    seeded = {t.name for t in seed_metadata.sorted_tables} | {users.name, logins.name}
    assert {p.table for p in policies} <= seeded
    # demo/policies.yaml is the seed file plus closed_accounts and login_history, kept
    # identical but for fan_out of what no demo service keeps.
    seed_file = load_policies(ROOT / "tests" / "data" / "seed_policies.yaml").policies
    unkept = {"support_tickets", "abandoned_carts"}
    demo_only = {"closed_accounts", "login_history"}
    assert [p for p in policies if p.name not in demo_only] == [
        p.model_copy(update={"fan_out": False}) if p.name in unkept else p for p in seed_file
    ]
    # Declared: exactly the example services, handling what they register.
    assert {s.name for s in demo.services} == set(EXAMPLE_SERVICES)
    for service in demo.services:
        assert service.pairs() == declared_handles(f"services.{service.name}"), service.name
    assert {p.name for p in policies} - {p.name for p in seed_file} == demo_only


def declared_handles(module: str) -> frozenset[tuple[str, str]]:
    _, handles = handles_of(module)
    return frozenset((e, a) for e, actions in handles.items() for a in actions)


def test_app_commands_exist() -> None:
    services = _services()
    for name in ("migrate", "seed", "serve"):
        command = services[name]["command"]
        if command[0] == "retention":
            result = CliRunner().invoke(cli_app, [*command[1:], "--help"])
            assert result.exit_code == 0, (name, result.output)
        else:
            assert command[:2] == ["python", "-m"], name
            assert importlib.util.find_spec(f"{command[2]}.__main__") is not None, name
    for n in EXAMPLE_SERVICES:
        # A shell reads the coordinator's public key from the keys volume, then execs.
        shell, flag, script = services[n]["command"]
        assert (shell, flag) == ("sh", "-c"), n
        assert script.endswith(f"exec python -m services.{n}"), n
        assert importlib.util.find_spec(f"services.{n}.__main__") is not None, n
        env = services[n]["environment"]
        assert env["RETENTION_SERVICE_SIGNING_KEY_FILE"].endswith(f"/{n}.key"), n
    assert services["seed"]["command"] == ["python", "-m", "demo", "seed"]


def test_compose_runs_exactly_the_example_services() -> None:
    """A service added to `services.EXAMPLES` but not to docker-compose.yml (or left
    there after its removal) fails here."""
    # A service's command is `python -m services.X`, maybe behind `sh -c` (its keys).
    running = {
        name
        for name, service in _services().items()
        if re.search(r"\bpython -m services\.\w+", " ".join(map(str, service.get("command", []))))
    }
    assert running == set(EXAMPLE_SERVICES)


@pytest.mark.parametrize("command", ["seed", "tokens", "requests"])
def test_the_one_shot_demo_commands_run_without_test_dependencies(command: str) -> None:
    # The image installs `.[faust]`, not `.[test]`: `python -m demo seed|tokens` must not
    # import the full demo (`demo.run`) or anything test-only.
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['demo', '{command}', '--help']\n"
        "try:\n"
        "    runpy.run_module('demo', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "test_only = {'pytest', 'hypothesis', 'testcontainers', 'demo.run'}\n"
        "print(sorted(test_only & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"python -m demo {command}" in result.stdout
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_start_order_waits_for_health() -> None:
    services = _services()

    def waits_for(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert waits_for("migrate") == {"postgres": "service_healthy"}
    assert waits_for("seed") == {"migrate": "service_completed_successfully"}
    assert waits_for("serve") == {
        "seed": "service_completed_successfully",
        "tokens": "service_completed_successfully",
        "kafka": "service_healthy",
    }
    for name in EXAMPLE_SERVICES:
        assert waits_for(name) == {"postgres": "service_healthy", "serve": "service_healthy"}
    assert waits_for("prometheus") == {"serve": "service_healthy"}
    assert waits_for("grafana") == {"prometheus": "service_started"}
    for name in ("kafka", "postgres", "serve"):
        assert "healthcheck" in services[name], name
    for name in ("migrate", "seed", "tokens", "requests"):
        assert services[name]["restart"] == "no", name
    # The demo's requests wait for serve and for the services that must acknowledge them.
    assert waits_for("requests") == {
        "serve": "service_healthy",
        **dict.fromkeys(EXAMPLE_SERVICES, "service_started"),
    }
    assert {str(services[n]["build"]) for n in APP_SERVICES} == {str(services["serve"]["build"])}
    assert "relay" not in services  # `retention serve` runs the relay
    # `docker compose up` starts everything but the observability profile.
    assert {n for n, s in services.items() if "profiles" in s} == set(OBSERVABILITY)
    assert all(services[n]["profiles"] == ["observability"] for n in OBSERVABILITY)


def test_tokens_are_made_once_into_a_volume_only_serve_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services, settings = _services(), _serve_settings(monkeypatch)
    tokens = services["tokens"]
    assert tokens["command"][:4] == ["python", "-m", "demo", "tokens"]
    assert tokens["build"] == _services()["serve"]["build"]
    assert "environment" not in tokens  # no database, no Kafka: only the file
    written = PurePosixPath(tokens["command"][4])
    assert written == PurePosixPath(str(settings.api_tokens_file))
    [made] = [v for v in tokens["volumes"] if not v.startswith("demo-writer:")]
    # serve mounts the tokens volume and the signing keys volume (test below).
    [read] = [v for v in services["serve"]["volumes"] if not v.startswith("keys:")]
    volume, directory = made.split(":")
    assert read == f"{volume}:{directory}:ro"
    assert volume in load_compose()["volumes"]  # type: ignore[operator]
    assert written.parent == PurePosixPath(directory)
    # The image makes the mount point the service user's, so the volume starts writable.
    assert f"install -d -o retention -m 0700 {directory}" in APP_DOCKERFILE.read_text()
    # Every other service sees neither the volume nor the file.
    for name, service in services.items():
        if name not in ("tokens", "serve"):
            assert volume not in str(service.get("volumes", [])), name
    # What the command writes is a tokens file `serve` loads, with one token per scope.
    path = tmp_path / written.name
    assert tokens_main([str(path)]) == 0
    assert {(t.name, t.scope.value) for t in load_tokens_file(path).tokens} == {
        ("demo-reader", "read"),
        ("demo-writer", "write"),
        ("demo-admin", "admin"),
    }
    assert tokens_main([str(path)]) == 0  # a later `up` keeps the file
    assert len(load_tokens_file(path).tokens) == 3


def _mounts(name: str) -> dict[str, Path]:
    """Container path → host path of a service's read-only bind mounts."""
    mounts = {}
    for volume in _services()[name]["volumes"]:
        host, container, mode = volume.split(":")
        assert mode == "ro", volume
        assert host.startswith("./"), volume
        assert (ROOT / host).exists(), volume
        mounts[container] = ROOT / host
    return mounts


def test_prometheus_scrapes_serve_and_loads_the_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = _mounts("prometheus")
    config_path = PurePosixPath("/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(mounts[str(config_path)].read_text())
    for rule_file in config["rule_files"]:
        in_container = config_path.parent / rule_file
        assert mounts[str(in_container)] == ROOT / "deploy" / "prometheus" / "alerts.yml"
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    # serve's metrics are on its HTTP port, each service's on the SDK's metrics port.
    settings = _serve_settings(monkeypatch)
    services = _services()
    service_ports = set()
    for name in EXAMPLE_SERVICES:
        for key, value in services[name]["environment"].items():
            monkeypatch.setenv(key, str(value))
        consumer = ConsumerSettings()
        assert consumer.metrics_host == "0.0.0.0", name  # noqa: S104 - containers listen for the scraper
        assert consumer.metrics_port == METRICS_PORT, name
        service_ports.add(f"{name}:{consumer.metrics_port}")
    assert targets == {f"serve:{settings.http_port}", *service_ports}
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )
    assert "127.0.0.1:9090:9090" in _services()["prometheus"]["ports"]


def test_grafana_provisions_the_dashboard_and_the_datasource() -> None:
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    prometheus_port = _services()["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    providers = yaml.safe_load((provisioning / "dashboards" / "retention.yml").read_text())
    (provider,) = providers["providers"]
    folder = PurePosixPath(provider["options"]["path"])
    dashboards = {c: h for c, h in mounts.items() if PurePosixPath(c).parent == folder}
    assert list(dashboards.values()) == [ROOT / "deploy" / "grafana" / "retention.json"]


def test_dockerfile_installs_every_shipped_package() -> None:
    dockerfile = APP_DOCKERFILE.read_text()
    lines = [line.split() for line in dockerfile.splitlines() if line and line[0] != "#"]
    # The official image by default; deploy/images/build.sh passes the local base otherwise.
    assert ["ARG", "BASE=python:3.11-slim"] in lines
    assert ["FROM", "${BASE}"] in lines
    build = _services()["serve"]["build"]
    assert ROOT / build["context"] / build["dockerfile"] == APP_DOCKERFILE
    copied = {
        source
        for parts in lines
        if parts[0] == "COPY" and not parts[1].startswith("--from=")
        for source in parts[1:-1]
    }
    # The build's certificate authorities, from build.sh's staging area when it is there.
    copied.discard(".cach[e]/images/build-ca.cr[t]")
    for source in copied:
        assert (ROOT / source).exists(), source
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert shipped <= copied
    assert "demo" in copied  # `python -m demo seed` and demo/policies.yaml
    assert pyproject["project"]["readme"] in copied
    # The faust extra, for services.search_index, never the test extra: from the app lock
    # (tests/test_lock.py checks what it holds).
    assert "pip install --require-hashes -r requirements/app.txt" in dockerfile
    # The packages come from a wheel built in the first stage, with the optional C
    # extension (setup.py) where a compiler and OpenSSL's headers are there.
    assert "setup.py" in copied
    assert "pip wheel -q --no-deps --wheel-dir /wheels ." in dockerfile
    assert ["COPY", "--from=wheel", "/wheels", "/tmp/wheels"] in lines  # noqa: S108 - in the image
    assert "pip install --no-deps /tmp/wheels/*.whl" in dockerfile
    assert "faust" in pyproject["project"]["optional-dependencies"]


def test_the_signing_keys_are_made_by_seed_into_a_volume_everyone_reads() -> None:
    services = _services()
    mount = "keys:/app/.cache/demo/keys"
    assert mount in services["seed"]["volumes"]
    assert mount in services["serve"]["volumes"]
    for name in EXAMPLE_SERVICES:
        assert services[name]["volumes"] == [mount], name
    assert "keys" in load_compose()["volumes"]  # type: ignore[operator]
    key_file = services["serve"]["environment"]["RETENTION_SIGNING_KEY_FILE"]
    assert key_file == f"{mount.split(':')[1]}/coordinator.key"


def test_the_demo_requests_go_through_the_api_with_the_writer_token(tmp_path: Path) -> None:
    """`requests` files the demo's two erasure requests over HTTP (demo/requests.py) with
    the demo-writer token, which `tokens` writes in clear into a volume only the two of
    them mount; the tokens file itself keeps only hashes."""
    services = _services()
    requests, tokens = services["requests"], services["tokens"]
    command = requests["command"]
    assert command[:4] == ["python", "-m", "demo", "requests"]
    options = dict(zip(command[4::2], command[5::2], strict=True))
    url = urlsplit(options["--api"])
    serve_env = services["serve"]["environment"]
    assert (url.hostname, url.port) == ("serve", int(serve_env["RETENTION_HTTP_PORT"]))
    token_file = PurePosixPath(options["--token-file"])
    assert tokens["command"][-2:] == ["--writer-token-file", str(token_file)]
    [read] = requests["volumes"]
    [made] = [v for v in tokens["volumes"] if v.startswith("demo-writer:")]
    assert read == f"{made}:ro"
    assert PurePosixPath(made.split(":")[1]) == token_file.parent
    assert "demo-writer" in load_compose()["volumes"]  # type: ignore[operator]
    for name, service in services.items():
        if name not in ("tokens", "requests"):
            assert "demo-writer" not in str(service.get("volumes", [])), name
    assert "environment" not in requests  # no database, no Kafka: the API only
    assert f"install -d -o retention -m 0700 {token_file.parent}" in APP_DOCKERFILE.read_text()
    # What `tokens` writes: the writer token, 0600, whose hash the tokens file holds.
    path, writer = tmp_path / "tokens.yaml", tmp_path / "demo" / "writer.token"
    assert tokens_main([str(path), "--writer-token-file", str(writer)]) == 0
    assert writer.stat().st_mode & 0o777 == 0o600
    token = writer.read_text().strip()
    [entry] = [t for t in load_tokens_file(path).tokens if t.name == "demo-writer"]
    assert entry.scope.value == "write"
    assert hashlib.sha256(token.encode()).hexdigest() == entry.sha256
