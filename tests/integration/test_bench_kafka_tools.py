"""`make bench`'s Java tools connect with our `KafkaSettings`: SCRAM over TLS and mutual
TLS, on the private secured broker (tests/secure_kafka.py), with its ACLs enforced."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import kafka_tools
from coordinator.kafka.admin import ensure_topics
from coordinator.settings import RelaySettings
from schemas import KafkaSettings
from tests import infra
from tests.secure_kafka import SecuredKafka, secured_kafka

pytestmark = pytest.mark.slow

SERVICE = "billing"
WARMUP, RECORDS = 20, 200


@pytest.fixture(scope="module")
def broker() -> Iterator[SecuredKafka]:
    with secured_kafka([SERVICE]) as secured:
        admin = secured.settings("admin")
        asyncio.run(ensure_topics(admin, partitions=2))
        asyncio.run(infra.wait_for_topics(admin))
        yield secured


@pytest.fixture
def payloads(tmp_path: Path) -> Path:
    path = tmp_path / "records.payloads"
    path.write_text("\n".join(f'user:{i}\t{{"n": {i}}}' for i in range(50)))
    return path


def test_the_client_file_is_private_holds_the_login_and_goes_away(broker: SecuredKafka) -> None:
    kafka = broker.settings(SERVICE)
    assert kafka.sasl_password is not None
    password = kafka.sasl_password.get_secret_value()
    with kafka_tools.client_config(kafka) as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        text = path.read_text()
        assert "security.protocol=SASL_SSL" in text
        assert "sasl.mechanism=SCRAM-SHA-512" in text
        assert f'password="{password}"' in text
        assert f"ssl.truststore.location={kafka.ssl_cafile}" in text
    assert not path.exists()


def test_the_java_producer_and_consumer_run_as_their_principals(
    broker: SecuredKafka, payloads: Path
) -> None:
    coordinator = broker.settings("coordinator")
    topic = coordinator.topics.events
    rate = kafka_tools.producer_limit(
        coordinator, topic, WARMUP, RECORDS, payloads, RelaySettings()
    )
    assert rate > 0
    # The admin principal authenticates with its client certificate: key and chain in
    # separate files, as our clients take them, joined into Kafka's PEM key store.
    admin = broker.settings("admin")
    assert admin.ssl_keyfile is not None
    assert admin.ssl_certfile is not None
    assert kafka_tools.consumer_performance(admin, topic, WARMUP + RECORDS) > 0


def test_a_service_principal_may_not_write_events_with_the_java_producer_either(
    broker: SecuredKafka, payloads: Path
) -> None:
    service = broker.settings(SERVICE)
    assert service.sasl_password is not None
    with pytest.raises(RuntimeError) as refused:
        kafka_tools.producer_limit(service, service.topics.events, 0, 10, payloads, RelaySettings())
    assert "TopicAuthorizationException" in str(refused.value)
    assert service.sasl_password.get_secret_value() not in str(refused.value)


_LOAD_JAVA = """
import java.nio.file.*;
import java.util.*;
import java.util.stream.*;
public class Load {
    public static void main(String[] args) throws Exception {
        Properties latin = new Properties();
        try (var in = Files.newInputStream(Path.of(args[0]))) { latin.load(in); }
        Properties utf8 = new Properties();
        try (var reader = Files.newBufferedReader(Path.of(args[0]))) { utf8.load(reader); }
        for (Properties props : List.of(latin, utf8)) {
            System.out.println(props.getProperty(args[1]).codePoints()
                .mapToObj(Integer::toString).collect(Collectors.joining(",")));
        }
    }
}
"""


def test_any_password_reaches_both_java_readers_and_every_file_goes_on_failure(
    tmp_path: Path,
) -> None:
    """Kafka's tools read the file as ISO 8859-1, ProducerLimit as UTF-8: a password of any
    characters must reach both unchanged. The folder, with the password and the private
    key, is gone even when the block fails."""
    password = 'pä"ss\\word € 😀 x'
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text(f"-----{name}-----\n")
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="coordinator",
        sasl_password=password,
        ssl_cafile=tmp_path / "ca.pem",
        ssl_certfile=tmp_path / "cert.pem",
        ssl_keyfile=tmp_path / "key.pem",
    )
    (tmp_path / "Load.java").write_text(_LOAD_JAVA)
    login = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="coordinator" password="pä\\"ss\\\\word € 😀 x";'
    )
    expected = ",".join(str(ord(c)) for c in login)
    folders: list[Path] = []

    def fail_inside() -> None:
        with kafka_tools.client_config(kafka) as path:
            folders.append(path.parent)
            store = path.parent / "keystore.pem"
            modes = [stat.S_IMODE(p.stat().st_mode) for p in (path.parent, path, store)]
            assert modes == [0o700, 0o600, 0o600]
            assert path.read_bytes().isascii()
            done = subprocess.run(
                ["java", str(tmp_path / "Load.java"), str(path), "sasl.jaas.config"],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            assert done.stdout.split() == [expected, expected]
            raise RuntimeError("the block failed")

    with pytest.raises(RuntimeError, match="the block failed"):
        fail_inside()
    assert folders
    assert not folders[0].exists()
