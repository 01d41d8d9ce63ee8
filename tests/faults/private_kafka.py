"""A Kafka broker of one test's own, so a scenario can stop, kill and restart it.

The broker on the default port (19092) may belong to another checkout, and every other
test on the machine uses it: a scenario that stops Kafka must never touch it. Like
`private_postgres` does for PostgreSQL, `private_kafka()` runs a single-node KRaft broker
(the same Kafka 4.1.1 jars and `infra/kafka/server.properties` as `make infra-up`) from a
fresh temporary directory, on two free ports of its own on 127.0.0.1, as a child process
of the test, and removes everything on exit. `stop()` is SIGTERM (a clean shutdown) or,
with `kill=True`, SIGKILL (the broker host dies); `start()` brings it back on the same
ports and data.

The ports are chosen below the kernel's ephemeral range: a listener port inside it can
be taken by some outgoing connection while the broker is down, and the restart would
then fail with "Address already in use". The jars are fetched once into this checkout's
`.cache/kafka/lib` by `infra/infra.sh kafka-fetch` (Java 17+ and Maven needed).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.infra import ROOT

__all__ = ["PrivateKafka", "PrivateKafkaError", "private_kafka", "wait_until_answering"]

LIB = ROOT / ".cache" / "kafka" / "lib"
TEMPLATE = ROOT / "infra" / "kafka" / "server.properties"
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 60
JAVA_OPTS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-Djava.awt.headless=true",
    f"-Dlog4j2.configurationFile={ROOT / 'infra' / 'kafka' / 'log4j2.properties'}",
)
STARTED = "Kafka Server started"


def _cluster_id() -> str:
    """A fresh KRaft cluster id that the storage tool's argument parser accepts.

    One id in 64 starts with "-" in URL-safe base64, and argparse reads that as an
    option (the cause of a flaky CI failure); Kafka's own Uuid.randomUuid redraws too.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


class PrivateKafkaError(RuntimeError):
    """The private broker could not be set up, started or stopped; the message says why."""


def _ephemeral_low() -> int:
    try:
        low, _ = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low)
    except (OSError, ValueError):
        return 32768


def free_port_below_ephemeral(rng: random.Random, *, avoid: set[int]) -> int:
    """A free TCP port on 127.0.0.1 below the ephemeral range (never handed out at random)."""
    low = _ephemeral_low()
    for _ in range(500):
        port = rng.randrange(20000, low)
        if port in avoid:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PrivateKafkaError(f"no free port between 20000 and {low}")


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise PrivateKafkaError("java not found: install a Java 17+ JDK")
    return java


def fetch_jars() -> None:
    """The Kafka jars in this checkout's cache (once; `infra/infra.sh kafka-fetch`)."""
    if (LIB / ".complete").exists():
        return
    done = subprocess.run(
        [str(ROOT / "infra" / "infra.sh"), "kafka-fetch"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise PrivateKafkaError(f"cannot fetch the Kafka jars:\n{done.stderr[-2000:]}")


def wait_until_answering(bootstrap: str, *, timeout_s: float) -> None:
    """Until a client gets the broker's metadata (asked from a child process, so that
    this one never keeps sockets of a client given up on mid-connect)."""
    probe = (
        "import asyncio, sys; from schemas import KafkaSettings; "
        "from tests.infra import check_kafka; "
        "asyncio.run(check_kafka(KafkaSettings(bootstrap_servers=sys.argv[1])))"
    )
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run(
            [sys.executable, "-c", probe, bootstrap],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise PrivateKafkaError(
                f"the broker on {bootstrap} does not answer:\n{done.stderr.decode()[-2000:]}"
            )
        time.sleep(1)


@dataclass
class PrivateKafka:
    directory: Path
    port: int
    controller_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log(self) -> Path:
        return self.directory / "broker.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def prepare(self) -> None:
        """Write the configuration and format the storage (once, before the first start)."""
        data = self.directory / "data"
        data.mkdir(parents=True)
        self.config.write_text(
            TEMPLATE.read_text()
            .replace("@DATA_DIR@", str(data))
            .replace("@CONTROLLER_PORT@", str(self.controller_port))
            .replace("@PORT@", str(self.port))
        )
        cluster_id = _cluster_id()
        done = subprocess.run(
            [
                _java(),
                *JAVA_OPTS,
                "-cp",
                f"{LIB}/*",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise PrivateKafkaError(f"kafka storage format failed:\n{done.stderr[-2000:]}")

    def start(self) -> None:
        """Start the broker and wait until a client gets metadata from it."""
        if self.running:
            raise PrivateKafkaError("the private broker is already running")
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [_java(), *JAVA_OPTS, "-cp", f"{LIB}/*", "kafka.Kafka", str(self.config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with self.log.open("rb") as log:
                log.seek(offset)
                if STARTED.encode() in log.read():
                    break
            if not self.running:
                raise PrivateKafkaError(f"the private broker exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise PrivateKafkaError(
                    f"the private broker did not start in {START_TIMEOUT_S} s:\n{self.log_tail()}"
                )
            time.sleep(0.5)
        wait_until_answering(self.bootstrap, timeout_s=max(10.0, deadline - time.monotonic()))

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL, and wait until the process is gone."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def private_kafka() -> Iterator[PrivateKafka]:
    """A running private broker; stopped (SIGKILL) and deleted on exit."""
    fetch_jars()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    port = free_port_below_ephemeral(rng, avoid=set())
    controller = free_port_below_ephemeral(rng, avoid={port})
    broker = PrivateKafka(Path(tempfile.mkdtemp(prefix="private-kafka-")), port, controller)
    try:
        broker.prepare()
        broker.start()
        yield broker
    finally:
        broker.stop(kill=True)
        shutil.rmtree(broker.directory, ignore_errors=True)


async def restart(broker: PrivateKafka, *, kill: bool, down_s: float) -> None:
    """Stop the broker, keep it down for `down_s`, start it again (from async code)."""
    await asyncio.to_thread(broker.stop, kill=kill)
    try:
        await asyncio.sleep(down_s)
    finally:
        await asyncio.to_thread(broker.start)
