"""Kafka's own clients as limits: its Java producer (bench/ProducerLimit.java) and
ConsumerPerformance (kafka-tools jar), connected with the same `KafkaSettings` as ours
(TLS, SASL, mutual TLS: `client_config`)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coordinator.settings import RelaySettings
from schemas import KafkaSettings
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


_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _jaas_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _property(name: str, value: str) -> str:
    """One line of a Java properties file, all ASCII: Kafka's tools read the file as
    ISO 8859-1 (`Utils.loadProps`), ProducerLimit as UTF-8, and both read `\\uXXXX`."""
    escaped = "".join(_java_escape(char) for char in value)
    return f"{name}={escaped}\n"


def _java_escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if " " <= char <= "~":
        return char
    units = char.encode("utf-16-be")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def _private_file(path: Path, text: str) -> None:
    """Created 0600 before a byte is written: it holds a password or a private key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


@contextmanager
def client_config(kafka: KafkaSettings) -> Iterator[Path]:
    """A Java client properties file with `kafka`'s connection settings, for as long as
    the block runs: security protocol, SASL mechanism and JAAS login (the password),
    the CA as a PEM trust store, and for mutual TLS the key and certificate chain as a
    PEM key store (the key must be unencrypted PKCS#8, as our clients need it too).

    The file lives in a private temporary folder (0700, the file 0600) and is removed
    afterwards: the password never goes on a command line, where `ps` would show it.
    Host names are checked, as our clients do (Java's default).
    """
    with tempfile.TemporaryDirectory(prefix="kafka-client-") as folder:
        lines = [_property("security.protocol", kafka.security_protocol)]
        if kafka.sasl_mechanism is not None and kafka.sasl_password is not None:
            login = (
                f"{_LOGIN_MODULES[kafka.sasl_mechanism]} required "
                f"username={_jaas_quoted(kafka.sasl_username or '')} "
                f"password={_jaas_quoted(kafka.sasl_password.get_secret_value())};"
            )
            lines += [
                _property("sasl.mechanism", kafka.sasl_mechanism),
                _property("sasl.jaas.config", login),
            ]
        if kafka.ssl_cafile is not None:
            lines += [
                _property("ssl.truststore.type", "PEM"),
                _property("ssl.truststore.location", str(kafka.ssl_cafile)),
            ]
        if kafka.ssl_certfile is not None:
            # Kafka's PEM key store is one file: the key, then the certificate chain.
            store = Path(folder) / "keystore.pem"
            key = kafka.ssl_keyfile.read_text() if kafka.ssl_keyfile is not None else ""
            _private_file(store, key + kafka.ssl_certfile.read_text())
            lines += [
                _property("ssl.keystore.type", "PEM"),
                _property("ssl.keystore.location", str(store)),
            ]
        path = Path(folder) / "client.properties"
        _private_file(path, "".join(lines))
        yield path


def _java(tool: str, args: list[str], timeout_s: float) -> str:
    command = ["java", "-Xmx512m", "-cp", f"{kafka_lib()}/*", MAIN_CLASS.format(tool), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def producer_limit(
    kafka: KafkaSettings,
    topic: str,
    warmup: int,
    records: int,
    payload_file: Path,
    relay: RelaySettings,
) -> float:
    """Records/s of Kafka's Java producer sending our records, keys included, after warm-up.

    bench/ProducerLimit.java, run as a single-file source program: Kafka 4.1's
    ProducerPerformance neither sends keys (its sticky partitioner fills batches better
    than our `type:id` keys can) nor has a warm-up option. `payload_file` holds one
    `key<TAB>value` line per record; our producer settings and `kafka`'s connection
    settings apply.
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
    command = ["java", "-Xmx512m", "-cp", f"{kafka_lib()}/*", str(source)]
    command += [kafka.bootstrap_servers, topic, str(payload_file), str(warmup), str(records)]
    command += [f"{k}={v}" for k, v in props.items()]
    with client_config(kafka) as config:
        command.append(f"--config={config}")
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ProducerLimit failed ({done.returncode}): {done.stderr[-2000:]}")
    match = re.search(r"records_per_s=([\d.]+)", done.stdout)
    if not match:
        raise RuntimeError(f"no summary in ProducerLimit output: {done.stdout[-500:]}")
    return float(match.group(1))


def consumer_performance(kafka: KafkaSettings, topic: str, records: int) -> float:
    """Records/s of ConsumerPerformance reading `records` records of `topic`."""
    with client_config(kafka) as config:
        out = _java(
            "ConsumerPerformance",
            [
                "--bootstrap-server",
                kafka.bootstrap_servers,
                "--consumer.config",
                str(config),
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
