"""Derives a host-network variant of docker-compose.yml, for machines without a bridge.

docker-compose.yml is what users run: official images, a bridge network, service names as
host names, fixed published ports. On a machine whose Docker engine has no bridge (ours:
docs/containers.md) every container shares the host's network, so this variant
- runs every service with `network_mode: host` and publishes nothing (host mode refuses
  port bindings);
- replaces each `service:port` with `127.0.0.1:<free port>`, and gives every port a service
  listens on (its published ports, its Kafka listeners, its `*_PORT` settings) a free port
  of its own: the four services' metrics ports would collide, and `make test`'s own Kafka
  and PostgreSQL hold the default ports;
- listens on 127.0.0.1 where docker-compose.yml says 0.0.0.0 (that would be every
  interface of the host);
- uses our local images (deploy/images/build.sh) instead of building or pulling, and
  Debian's Prometheus with a generated configuration that scrapes the same targets;
- leaves out what Debian's docker-compose 1.29 rejects (a top-level `name:`: the project
  name is given on the command line), the `x-` anchors (expanded) and Grafana, which has
  no Debian package.
Everything else (commands, environment, start order, healthchecks) is docker-compose.yml's;
tests/test_compose_host_network.py keeps the two in step.

    python -m deploy.compose.host_network OUT_DIR   # writes compose.yml and prometheus.yml
"""

from __future__ import annotations

import copy
import json
import random
import re
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
LOCAL_IMAGES = {
    "apache/kafka:4.1.1": "retention-fanout/kafka:4.1.1",
    "postgres:16": "retention-fanout/postgres:15",
    "retention-fanout/app:local": "retention-fanout/app:local",
    "prom/prometheus:v2.53.0": "retention-fanout/prometheus:local",
}
LEFT_OUT = ("grafana",)
"""No Debian package, so no local image: its dashboard JSON is not loaded here."""
PROMETHEUS_INTERVAL = "2s"
"""Scrape and rule interval of the check's Prometheus: the check waits on both."""
_LISTENER = re.compile(r"(?P<name>[A-Z_]+)://(?P<host>[^:,]*):(?P<port>\d+)")
LOWEST_PORT = 20000


def free_port(taken: set[int]) -> int:
    """A loopback port nothing listens on, below the ephemeral range (as tests/containers.py)."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        high = 32767
    for _ in range(500):
        port = random.randint(LOWEST_PORT, high)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port between {LOWEST_PORT} and {high}")


def own_ports(service: Mapping[str, Any]) -> list[int]:
    """The container ports a service listens on: published, Kafka listeners, `*PORT` settings,
    a Prometheus listen address; in the order the definition names them."""
    ports: list[int] = [int(str(p).rsplit(":", 1)[1]) for p in service.get("ports", [])]
    for name, value in (service.get("environment") or {}).items():
        if name.endswith("LISTENERS") and not name.endswith("ADVERTISED_LISTENERS"):
            ports += [int(m["port"]) for m in _LISTENER.finditer(str(value))]
        elif name.endswith("PORT") and str(value).isdigit():
            ports.append(int(value))
    for argument in service.get("command") or []:
        if str(argument).startswith("--web.listen-address="):
            ports.append(int(str(argument).rsplit(":", 1)[1]))
    return list(dict.fromkeys(ports))


def assign_ports(
    services: Mapping[str, Any], allocate: Callable[[], int]
) -> dict[str, dict[int, int]]:
    """service → {container port → host port}, a distinct host port for each."""
    return {
        name: {port: allocate() for port in own_ports(service)}
        for name, service in services.items()
    }


def _rewriter(service: str, ports: Mapping[str, Mapping[int, int]]) -> Callable[[str], str]:
    """Rewrites one string of `service`'s definition for the host network."""
    others = [
        (f"{name}:{old}", f"{LOOPBACK}:{new}")
        for name, m in ports.items()
        for old, new in m.items()
    ]
    own = ports.get(service, {})

    def rewrite(text: str) -> str:
        for before, after in others:
            text = re.sub(rf"(?<![\w.-]){re.escape(before)}(?!\d)", after, text)
        for old, new in own.items():
            # Listeners and its own address: `NAME://:29092`, `127.0.0.1:8080`, `0.0.0.0:9090`.
            text = re.sub(rf"://(?:0\.0\.0\.0)?:{old}(?!\d)", f"://{LOOPBACK}:{new}", text)
            text = re.sub(
                rf"(?:127\.0\.0\.1|0\.0\.0\.0|localhost):{old}(?!\d)", f"{LOOPBACK}:{new}", text
            )
        return LOOPBACK if text == "0.0.0.0" else text  # noqa: S104 - what gets replaced

    return rewrite


def _map_strings(value: Any, rewrite: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, list):
        return [_map_strings(v, rewrite) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, rewrite) for k, v in value.items()}
    return value


def host_network_variant(
    compose: Mapping[str, Any],
    ports: Mapping[str, Mapping[int, int]],
    *,
    prometheus_config: Path,
) -> dict[str, Any]:
    """The host-network variant of `compose` (docker-compose.yml, loaded) with `ports`."""
    services: dict[str, Any] = {}
    for name, original in compose["services"].items():
        if name in LEFT_OUT:
            continue
        service = _map_strings(copy.deepcopy(original), _rewriter(name, ports))
        service.pop("build", None)
        service.pop("ports", None)
        service["image"] = LOCAL_IMAGES[original["image"]]
        service["network_mode"] = "host"
        env = service.get("environment") or {}
        for variable, value in list(env.items()):
            if variable.endswith("_PORT") and str(value).isdigit():
                env[variable] = str(ports[name][int(value)])
        if original["image"].startswith("postgres:"):
            # The official image always listens on 5432; ours takes PGPORT, as pg_isready does.
            (port,) = ports[name].values()
            env["PGPORT"] = str(port)
        if original["image"].startswith("prom/prometheus:"):
            (port,) = ports[name].values()
            service["command"] = [
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                f"--web.listen-address={LOOPBACK}:{port}",
            ]
            service["volumes"] = [
                f"{prometheus_config}:/etc/prometheus/prometheus.yml:ro",
                f"{ROOT / 'deploy' / 'prometheus' / 'alerts.yml'}:/etc/prometheus/alerts.yml:ro",
            ]
        elif "volumes" in service:
            service["volumes"] = [_absolute(v) for v in service["volumes"]]
        services[name] = service
    variant: dict[str, Any] = {"services": services}
    if "volumes" in compose:
        # Named volumes (the API tokens file's) need no network: kept as they are.
        variant["volumes"] = copy.deepcopy(compose["volumes"])
    return variant


def _absolute(volume: str) -> str:
    host, _, rest = volume.partition(":")
    return f"{(ROOT / host).resolve()}:{rest}" if host.startswith(".") else volume


def prometheus_variant(
    config: Mapping[str, Any], ports: Mapping[str, Mapping[int, int]]
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml scraping the same targets on the host network."""
    variant = _map_strings(copy.deepcopy(config), _rewriter("prometheus", ports))
    variant["global"] = {
        "scrape_interval": PROMETHEUS_INTERVAL,
        "evaluation_interval": PROMETHEUS_INTERVAL,
    }
    return dict(variant)


class _NoAliases(yaml.SafeDumper):
    # docker-compose.yml's anchors expand to shared objects; written out plainly.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def generate(out: Path, *, allocate: Callable[[], int] | None = None) -> dict[str, Any]:
    """Write `out`/compose.yml and `out`/prometheus.yml; the ports chosen, per service."""
    taken: set[int] = set()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kept = {n: s for n, s in compose["services"].items() if n not in LEFT_OUT}
    ports = assign_ports(kept, allocate or (lambda: free_port(taken)))
    out.mkdir(parents=True, exist_ok=True)
    prometheus_file = out / "prometheus.yml"
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    prometheus_file.write_text(yaml.dump(prometheus_variant(prometheus, ports), Dumper=_NoAliases))
    variant = host_network_variant(compose, ports, prometheus_config=prometheus_file.resolve())
    (out / "compose.yml").write_text(
        "# Generated by deploy/compose/host_network.py from docker-compose.yml: do not edit.\n"
        + yaml.dump(variant, Dumper=_NoAliases, sort_keys=False)
    )
    # Readable by the containers' own users (the bind mounts keep the host's modes).
    for written in (out / "compose.yml", prometheus_file):
        written.chmod(0o644)
    return {name: {str(k): v for k, v in m.items()} for name, m in ports.items()}


def main(argv: Iterable[str]) -> int:
    (out,) = argv
    print(json.dumps(generate(Path(out)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
