"""consumer_sdk.faust without a broker: the import guard and attach()'s checks."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from consumer_sdk import ConfigurationError, ConsumerSettings, RetentionConsumer, RetentionEvent
from consumer_sdk._internal.transport import record_of
from consumer_sdk.faust import CONCURRENCY, _record, attach, faust_app_settings
from schemas import KafkaSettings
from schemas.signing import Verifier
from tests import keys
from tests.infra import ROOT

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:19092", topic_prefix="t.adapter")


def consumer(**settings: object) -> RetentionConsumer:
    retention = RetentionConsumer(
        "idx", kafka=KAFKA, settings=ConsumerSettings(database_url=None, **settings)
    )

    @retention.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    return retention


def test_importing_without_faust_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['faust'] = None\n"
        "import consumer_sdk\n"  # the core SDK never needs faust
        "import consumer_sdk.faust\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "ImportError" in result.stderr
    assert "pip install 'retention-fanout[faust]'" in result.stderr


def test_attach_adds_one_agent_with_concurrency_one() -> None:
    app = faust.App("retention.idx", **faust_app_settings(KAFKA))
    handle = attach(app, consumer())
    [agent] = app.agents.values()
    assert (agent.concurrency, CONCURRENCY) == (1, 1)
    assert list(agent.channel.topics) == ["t.adapter"]
    assert handle.retention.service == "idx"
    assert app.conf.topic_allow_declare is False
    assert app.conf.topic_disable_leader is True


def test_attach_rejects_other_brokers_groups_and_empty_registries() -> None:
    other = faust.App("retention.idx", broker="kafka://10.0.0.1:9092")
    with pytest.raises(ConfigurationError, match="brokers"):
        attach(other, consumer())
    app = faust.App("retention.idx", **faust_app_settings(KAFKA))
    with pytest.raises(ConfigurationError, match="group named by its id"):
        attach(app, consumer(group_id="something.else"))
    with pytest.raises(ConfigurationError, match="registered no handlers"):
        attach(
            app,
            RetentionConsumer("idx", kafka=KAFKA, settings=ConsumerSettings(database_url=None)),
        )
    with pytest.raises(ConfigurationError, match=r"faust\.App"):
        attach(object(), consumer())


def test_app_settings_carry_the_transport_settings() -> None:
    assert "broker_credentials" not in faust_app_settings(KAFKA)
    sasl = KafkaSettings(
        bootstrap_servers="127.0.0.1:19092",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="idx",
        sasl_password="idx-password",
    )
    settings = faust_app_settings(sasl)
    credentials = settings["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )
    assert (credentials.username, credentials.password) == ("idx", "idx-password")
    assert credentials.ssl_context is not None
    assert "idx-password" not in repr(credentials)
    tls = faust_app_settings(KAFKA.model_copy(update={"security_protocol": "SSL"}))
    assert isinstance(tls["broker_credentials"], faust.SSLCredentials)
    # What Faust hands to its own aiokafka clients: the same as ours.
    retention = RetentionConsumer("idx", kafka=sasl, settings=ConsumerSettings(database_url=None))
    app = faust.App("retention.idx", **faust_app_settings(retention.kafka))
    assert app.conf.broker_credentials.mechanism.value == "SCRAM-SHA-512"
    assert app.conf.broker_client_id == "idx"


def test_app_settings_order_brokers() -> None:
    two = KAFKA.model_copy(update={"bootstrap_servers": "b:2, a:1"})
    assert faust_app_settings(two)["broker"] == "kafka://a:1;kafka://b:2"


def _message(headers: Any, key: bytes, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(
        topic="t.adapter", partition=0, offset=7, key=key, value=value, headers=headers
    )


def test_repeated_signature_headers_are_refused_as_the_runtime_refuses_them() -> None:
    """However a driver hands a repeated `retention-batch` or v1 header (as pairs, or as
    a mapping holding several values under the name), the adapter's record carries every
    value, and the verdict is the aiokafka runtime's on the same record: malformed."""
    signer = keys.signer(keys.COORDINATOR)
    verifier = Verifier([signer.public])
    records = [(b"k1", b"v1"), (b"k2", b"v2")]
    [v2_first, v2_second] = signer.sign_batch_v2(records)
    [v1_first, _] = signer.sign_batch(records)
    key, value = records[0]

    def verdicts(pairs: list[tuple[str, bytes]], *as_faust: Any) -> set[str]:
        runtime = record_of(_message(pairs, key, value))
        found = {verifier.verify(key, value, runtime.headers).verdict.value}
        for headers in as_faust:
            record = _record(_message(headers, key, value))
            assert sorted(record.headers) == sorted(runtime.headers)
            found.add(verifier.verify(record.key, record.value, record.headers).verdict.value)
        return found

    [(batch, genuine)] = v2_first
    [(_, other)] = v2_second
    assert verdicts([(batch, genuine)], {batch: genuine}) == {"valid"}
    assert verdicts([(batch, genuine), (batch, genuine)], {batch: [genuine, genuine]}) == {
        "malformed_signature"
    }
    assert verdicts([(batch, genuine), (batch, other)], {batch: (genuine, other)}) == {
        "malformed_signature"
    }
    v1 = dict(v1_first)
    assert verdicts(list(v1_first), v1) == {"valid"}
    for name in v1:
        twice = [*v1_first, (name, v1[name])]
        assert verdicts(twice, {**v1, name: [v1[name], v1[name]]}) == {"malformed_signature"}
    # v1 beside v2 is refused whichever way it comes.
    assert verdicts([*v1_first, (batch, genuine)], {**v1, batch: genuine}) == {
        "malformed_signature"
    }
