"""Kafka's own ProducerPerformance and ConsumerPerformance (kafka-tools jar) as limits."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

from coordinator.settings import RelaySettings
from tests.infra import ROOT

MAIN_CLASS = "org.apache.kafka.tools.{}"


@functools.cache
def kafka_lib() -> Path:
    """The Kafka jars: $BENCH_KAFKA_LIB, else .cache/kafka/lib.

    `infra.sh kafka-fetch` owns that directory: it returns at once when its last fetch
    completed, and otherwise (fresh clone, or a fetch cut short) fetches from Maven
    Central — the same jars the broker runs on, so the tools match its version.
    """
    explicit = os.environ.get("BENCH_KAFKA_LIB")
    if explicit:
        if not any(Path(explicit).glob("kafka-tools-*.jar")):
            raise SystemExit(f"BENCH_KAFKA_LIB={explicit} holds no kafka-tools jar")
        return Path(explicit)
    subprocess.run([str(ROOT / "infra" / "infra.sh"), "kafka-fetch"], check=True, timeout=900)
    return ROOT / ".cache" / "kafka" / "lib"


def _java(tool: str, args: list[str], timeout_s: float) -> str:
    command = ["java", "-Xmx512m", "-cp", f"{kafka_lib()}/*", MAIN_CLASS.format(tool), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def producer_performance(
    bootstrap: str, topic: str, records: int, payload_file: Path, relay: RelaySettings
) -> float:
    """Records/s of ProducerPerformance sending our real events with our producer settings."""
    props = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": "true",
        "compression.type": relay.compression,
        "linger.ms": str(relay.linger_ms),
        "batch.size": str(relay.max_batch_size),
        "max.request.size": str(max(relay.max_batch_size * 2, 1_048_576)),
    }
    out = _java(
        "ProducerPerformance",
        [
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--throughput",
            "-1",
            "--payload-file",
            str(payload_file),
            "--payload-delimiter",
            "\n",
            "--producer-props",
            *(f"{k}={v}" for k, v in props.items()),
        ],
        timeout_s=600,
    )
    match = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", out)
    if not match:
        raise RuntimeError(f"no summary in ProducerPerformance output: {out[-500:]}")
    return float(match[-1][1])


def consumer_performance(bootstrap: str, topic: str, records: int) -> float:
    """Records/s of ConsumerPerformance reading `records` records of `topic`."""
    out = _java(
        "ConsumerPerformance",
        [
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--messages",
            str(records),
            "--timeout",
            "60000",
        ],
        timeout_s=600,
    )
    lines = [line for line in out.splitlines() if line.strip()]
    header = [h.strip() for h in lines[-2].split(",")]
    values = [v.strip() for v in lines[-1].split(",")]
    return float(values[header.index("nMsg.sec")])
