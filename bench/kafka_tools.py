"""Kafka's own clients as limits: its Java producer (bench/ProducerLimit.java) and
ConsumerPerformance (kafka-tools jar)."""

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


def producer_limit(
    bootstrap: str, topic: str, warmup: int, records: int, payload_file: Path, relay: RelaySettings
) -> float:
    """Records/s of Kafka's Java producer sending our records, keys included, after warm-up.

    bench/ProducerLimit.java, run as a single-file source program: Kafka 4.1's
    ProducerPerformance neither sends keys (its sticky partitioner fills batches better
    than our `type:id` keys can) nor has a warm-up option. `payload_file` holds one
    `key<TAB>value` line per record; our producer settings apply.
    """
    props = {
        "acks": "all",
        "enable.idempotence": "true",
        "compression.type": relay.compression,
        "linger.ms": str(relay.linger_ms),
        "batch.size": str(relay.max_batch_size),
        "max.request.size": str(max(relay.max_batch_size * 2, 1_048_576)),
    }
    source = ROOT / "bench" / "ProducerLimit.java"
    command = ["java", "-Xmx512m", "-cp", f"{kafka_lib()}/*", str(source), bootstrap, topic]
    command += [str(payload_file), str(warmup), str(records)]
    command += [f"{k}={v}" for k, v in props.items()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ProducerLimit failed ({done.returncode}): {done.stderr[-2000:]}")
    match = re.search(r"records_per_s=([\d.]+)", done.stdout)
    if not match:
        raise RuntimeError(f"no summary in ProducerLimit output: {done.stdout[-500:]}")
    return float(match.group(1))


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
