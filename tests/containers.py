"""Kafka and PostgreSQL for a test session as containers of our own images (testcontainers).

The images are this project's (`make images`, deploy/images/): testcontainers' KafkaContainer
assumes Confluent images, and no registry needs to answer. Every container runs on the
host's network (the machines this runs on have no bridge), so it is reached at 127.0.0.1 on
its own port: ports come from `free_port`, and each container is asserted still running
after its readiness wait, because a server that cannot bind its port exits quietly and the
tests would then talk to whatever else listens there.
"""

from __future__ import annotations

import os
import random
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

# Before testcontainers reads its configuration: Ryuk (the reaper) is an image we do not
# have, and this module removes its containers itself.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

KAFKA_IMAGE = "retention-fanout/kafka:4.1.1"
POSTGRES_IMAGE = "retention-fanout/postgres:15"
IMAGES = (KAFKA_IMAGE, POSTGRES_IMAGE)

KAFKA_READY = "Kafka Server started"
POSTGRES_READY = "database system is ready to accept connections"
KAFKA_START_TIMEOUT_S = 180
POSTGRES_START_TIMEOUT_S = 60
USER = PASSWORD = "retention"
DATABASES = ("retention", "retention_services")
"""The databases infra/infra.sh creates too; tests make their own besides."""
LOWEST_PORT = 20000
"""Below it sit the ports our other stacks default to (Kafka 19092, PostgreSQL 5432)."""


def engine_problem() -> str | None:
    """Why containers cannot run here (no engine, images missing), or None if they can."""
    try:
        client = docker.from_env(timeout=10)
    except docker.errors.DockerException as exc:
        return f"no Docker engine answers ({exc}): run `make docker-up`"
    try:
        client.ping()
        missing = [i for i in IMAGES if not client.images.list(name=i)]
    except docker.errors.DockerException as exc:
        return f"the Docker engine does not answer ({exc}): run `make docker-up`"
    finally:
        client.close()
    if missing:
        return f"images missing: {', '.join(missing)}: run `make images`"
    return None


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(taken: set[int]) -> int:
    """A port nothing listens on, below the ephemeral range: a broker restarted after a kill
    must find its port still free, and outgoing connections take theirs from that range."""
    high = _ephemeral_low() - 1
    for _ in range(500):
        port = random.randint(LOWEST_PORT, high)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port between {LOWEST_PORT} and {high}")


class HostNetworkContainer(DockerContainer):  # type: ignore[misc]
    """A container on the host's network, reached at 127.0.0.1 on the container's own ports."""

    def __init__(self, image: str, ready_line: str, timeout_s: float) -> None:
        super().__init__(image)
        self.with_kwargs(network_mode="host")
        self.ready_line = ready_line
        self.waiting_for(LogMessageWaitStrategy(ready_line).with_startup_timeout(timeout_s))
        self.timeout_s = timeout_s

    def with_exposed_ports(self, *ports: int | str) -> Self:
        # docker-py rejects port bindings in host mode; the ports are the container's own.
        return self

    def get_container_host_ip(self) -> str:
        return "127.0.0.1"

    def get_exposed_port(self, port: int) -> int:
        return port

    def start(self) -> Self:
        super().start()
        self.assert_running()
        return self

    @property
    def short_id(self) -> str:
        return str(self.get_wrapped_container().short_id)

    def assert_running(self) -> None:
        container = self.get_wrapped_container()
        container.reload()
        if container.status != "running":
            tail = container.logs(tail=20).decode(errors="replace")
            raise RuntimeError(
                f"{self.image} container {self.short_id} is {container.status} after start "
                f"(a port taken by another process?):\n{tail}"
            )

    def ready_lines(self) -> int:
        logs = self.get_wrapped_container().logs().decode(errors="replace")
        return len(re.findall(re.escape(self.ready_line), logs))

    def restart_after_stop(self) -> None:
        """`docker start` the stopped container; return once it is ready again."""
        seen = self.ready_lines()
        self.get_wrapped_container().start()
        strategy = LogMessageWaitStrategy(self.ready_line, times=seen + 1)
        strategy.with_startup_timeout(self.timeout_s).wait_until_ready(self)
        self.assert_running()


@dataclass
class ContainerInfra:
    """The session's Kafka broker and PostgreSQL server, each a container of our images."""

    kafka: HostNetworkContainer
    postgres: HostNetworkContainer
    kafka_port: int
    postgres_port: int
    lines: list[str] = field(default_factory=list)
    kills: int = 0
    """`docker kill`s of the Kafka container so far."""

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.postgres_port}/{DATABASES[0]}"

    @classmethod
    def start(cls) -> ContainerInfra:
        taken: set[int] = set()
        kafka_port, controller_port, postgres_port = (free_port(taken) for _ in range(3))
        kafka = HostNetworkContainer(KAFKA_IMAGE, KAFKA_READY, KAFKA_START_TIMEOUT_S)
        kafka.with_env("BROKER_PORT", str(kafka_port))
        kafka.with_env("CONTROLLER_PORT", str(controller_port))
        postgres = HostNetworkContainer(POSTGRES_IMAGE, POSTGRES_READY, POSTGRES_START_TIMEOUT_S)
        postgres.with_envs(
            POSTGRES_USER=USER,
            POSTGRES_PASSWORD=PASSWORD,
            POSTGRES_DB=DATABASES[0],
            PGPORT=str(postgres_port),
        )
        # Throwaway data: durability buys nothing and costs the tests time.
        postgres.with_command("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        started: list[HostNetworkContainer] = []
        try:
            for container in (postgres, kafka):
                container.start()
                started.append(container)
        except BaseException:
            for container in started:
                container.stop()
            raise
        infra = cls(kafka, postgres, kafka_port, postgres_port)
        for name, container, port in (
            ("kafka", kafka, kafka_port),
            ("postgres", postgres, postgres_port),
        ):
            infra.lines.append(
                f"{name}: container {container.short_id} of {container.image} "
                f"on 127.0.0.1:{port} (host network)"
            )
        return infra

    def kafka_command(self, command: str, *args: str) -> None:
        """infra/infra.sh's broker commands, on the Kafka container: `kafka-stop [--kill]`
        (`docker kill`, or `docker stop` with time for a clean shutdown) and `kafka-start`."""
        container = self.kafka.get_wrapped_container()
        if command == "kafka-stop" and args == ("--kill",):
            container.kill()
            container.wait(timeout=60)
            self.kills += 1
        elif command == "kafka-stop" and not args:
            container.stop(timeout=30)
        elif command == "kafka-start" and not args:
            self.kafka.restart_after_stop()
        else:
            raise ValueError(f"unknown broker command for the Kafka container: {command} {args}")

    def remove(self) -> list[str]:
        """Remove both containers; what was removed, for the log."""
        removed = []
        for container in (self.kafka, self.postgres):
            short_id = container.short_id
            container.stop()
            removed.append(f"removed container {short_id} of {container.image}")
        return removed
