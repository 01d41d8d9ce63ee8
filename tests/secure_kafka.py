"""A private Kafka broker with TLS, SCRAM users and ACLs, for one test module.

`secured_kafka(services)` runs `infra/infra.sh secure-start` into a fresh temporary
directory on free ports: the same Kafka 4.1.1 jars as the shared broker (fetched once by
infra.sh), a CA and certificates made at start, a SCRAM-SHA-512 user per principal
(`coordinator` and each service), and the ACLs of coordinator/kafka_acls.py. The shared
broker on 19092 is never touched. Everything is removed on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from schemas import KafkaSettings
from tests.faults.private_postgres import free_port
from tests.infra import ROOT

__all__ = ["SecuredKafka", "secured_kafka"]

INFRA = ROOT / "infra" / "infra.sh"
START_TIMEOUT_S = 300


@dataclass(frozen=True)
class SecuredKafka:
    """The broker's directory, from which each principal's client settings are read."""

    root: Path

    def settings(self, principal: str, **overrides: object) -> KafkaSettings:
        """`principal`'s settings (`admin` is the mutual-TLS super user), as written to
        `<principal>.env` by infra.sh; keyword arguments win over the file."""
        values: dict[str, object] = {}
        for line in (self.root / f"{principal}.env").read_text().splitlines():
            name, _, value = line.partition("=")
            values[name] = value
        return KafkaSettings(**{**values, **overrides})


def _environment(ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_SECURE_")}
    env.update({f"INFRA_SECURE_{name}": str(port) for name, port in ports.items()})
    return env


def _stop(root: Path, env: dict[str, str]) -> None:
    # Its data goes away with it: no clean shutdown needed.
    subprocess.run(
        [str(INFRA), "secure-stop", str(root), "--kill"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    shutil.rmtree(root, ignore_errors=True)


def _start(services: Sequence[str]) -> tuple[Path, dict[str, str], str]:
    """Start one on fresh ports; the failure text if it did not come up."""
    root = Path(tempfile.mkdtemp(prefix="secure-kafka-"))
    env = _environment(
        {"PORT": free_port(), "TLS_PORT": free_port(), "CONTROLLER_PORT": free_port()}
    )
    done = subprocess.run(
        [str(INFRA), "secure-start", str(root), *services],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if done.returncode == 0:
        return root, env, ""
    log = root / "broker.log"
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    _stop(root, env)
    return root, env, f"{done.stderr}\n{tail}"


@contextmanager
def secured_kafka(services: Sequence[str]) -> Iterator[SecuredKafka]:
    root, env, failure = _start(services)
    # A free port is free when asked, not necessarily when the broker binds it.
    if "already in use" in failure or "is taken" in failure:
        root, env, failure = _start(services)
    if failure:
        raise RuntimeError(f"infra.sh secure-start failed:\n{failure}")
    try:
        yield SecuredKafka(root)
    finally:
        _stop(root, env)
