"""`make bench`'s Java tools connect with our `KafkaSettings`: SCRAM over TLS and mutual
TLS, on the private secured broker (tests/secure_kafka.py), with its ACLs enforced."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import kafka_tools
from coordinator.kafka.admin import ensure_topics
from coordinator.settings import RelaySettings
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
