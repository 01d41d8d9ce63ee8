"""`KafkaSettings`: the transport settings of SPEC §9 and the client arguments built from them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from consumer_sdk import ConsumerSettings, RetentionConsumer
from coordinator.settings import COORDINATOR_CLIENT_ID, Settings
from schemas import KafkaSettings
from schemas.kafka import DEFAULT_CLIENT_ID, KafkaSettingsError

PASSWORD = "correct horse battery staple"
SASL: dict[str, Any] = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "billing",
    "sasl_password": PASSWORD,
}


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"security_protocol": "SASL_SSL"}, "RETENTION_KAFKA_SASL_MECHANISM"),
        ({**SASL, "sasl_username": None}, "RETENTION_KAFKA_SASL_USERNAME"),
        ({**SASL, "sasl_password": None}, "RETENTION_KAFKA_SASL_PASSWORD"),
        ({"sasl_password": PASSWORD}, "RETENTION_KAFKA_SASL_PASSWORD set"),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                **{k: v for k, v in SASL.items() if k != "security_protocol"},
                "ssl_cafile": "ca.pem",
            },
            "RETENTION_KAFKA_SSL_CAFILE set",
        ),
        ({"ssl_certfile": "c.pem"}, "RETENTION_KAFKA_SSL_CERTFILE set"),
        ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "RETENTION_KAFKA_SSL_KEYFILE needs"),
        ({"client_id": " "}, "RETENTION_KAFKA_CLIENT_ID"),
    ],
)
def test_contradictions_name_the_setting_and_never_the_password(
    given: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(**given)
    assert named in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_a_bad_variable_is_named_as_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_KAFKA_SASL_MECHANISM", "SCRAM-SHA-1")
    monkeypatch.setenv("RETENTION_KAFKA_SASL_PASSWORD", PASSWORD)
    with pytest.raises(ValidationError) as caught:
        KafkaSettings()
    assert "RETENTION_KAFKA_SASL_MECHANISM" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_password_stays_out_of_repr_and_str() -> None:
    kafka = KafkaSettings(**{**SASL, "security_protocol": "SASL_PLAINTEXT"})
    assert PASSWORD not in repr(kafka)
    assert PASSWORD not in str(kafka)
    assert kafka.client_kwargs()["sasl_plain_password"] == PASSWORD


def test_sasl_client_arguments() -> None:
    kwargs = KafkaSettings(**SASL).client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "billing"
    # No CA file: the system's trust store, with host names checked.
    assert kwargs["ssl_context"].check_hostname is True
    plaintext = KafkaSettings().client_kwargs()
    assert "ssl_context" not in plaintext
    assert "sasl_mechanism" not in plaintext


def test_librdkafka_config_is_the_same_connection(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("-")
    config = KafkaSettings(**SASL, ssl_cafile=ca).librdkafka_config()
    assert {k: config[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username")} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "billing",
    }
    assert config["sasl.password"] == PASSWORD
    assert config["ssl.ca.location"] == str(ca)
    assert "ssl.endpoint.identification.algorithm" not in config  # librdkafka's https default
    # No CA file: the system's trust store; a certificate file may hold the key too.
    mtls = KafkaSettings(security_protocol="SSL", ssl_certfile=cert).librdkafka_config()
    assert (mtls["ssl.ca.location"], mtls["ssl.key.location"]) == ("probe", str(cert))
    assert "sasl.password" not in mtls
    with_key = KafkaSettings(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=key)
    assert with_key.librdkafka_config()["ssl.key.location"] == str(key)
    plaintext = KafkaSettings().librdkafka_config()
    assert plaintext["security.protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("ssl.", "sasl.")) for k in plaintext)
    with pytest.raises(KafkaSettingsError, match="RETENTION_KAFKA_SSL_CAFILE"):
        KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "absent").librdkafka_config()


@pytest.mark.parametrize("setting", ["ssl_cafile", "ssl_certfile"])
def test_an_unusable_file_is_named_when_a_client_is_built(tmp_path: Path, setting: str) -> None:
    missing = KafkaSettings(security_protocol="SSL", **{setting: tmp_path / "absent.pem"})
    with pytest.raises(KafkaSettingsError, match=f"RETENTION_KAFKA_{setting.upper()}=.*no such"):
        missing.client_kwargs()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(KafkaSettingsError, match=f"RETENTION_KAFKA_{setting.upper()}="):
        KafkaSettings(security_protocol="SSL", **{setting: garbage}).client_kwargs()


def test_client_id_defaults_to_who_is_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = ConsumerSettings(database_url=None)
    assert KafkaSettings().client_kwargs()["client_id"] == DEFAULT_CLIENT_ID
    assert RetentionConsumer("billing", settings=sdk).kafka.client_kwargs()["client_id"] == (
        "billing"
    )
    assert Settings().kafka.client_kwargs()["client_id"] == COORDINATOR_CLIENT_ID
    monkeypatch.setenv("RETENTION_KAFKA_CLIENT_ID", "billing-eu-1")
    assert RetentionConsumer("billing", settings=sdk).kafka.effective_client_id == "billing-eu-1"
    assert Settings().kafka.effective_client_id == "billing-eu-1"


def test_environ_round_trips_everything_but_the_client_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kafka = KafkaSettings(
        **SASL, ssl_cafile=tmp_path / "ca.pem", topic_prefix="p", client_id="billing"
    )
    env = kafka.environ()
    assert "RETENTION_KAFKA_CLIENT_ID" not in env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert KafkaSettings() == kafka.model_copy(update={"client_id": None})


def _self_signed(directory: Path, *, passphrase: str | None) -> tuple[Path, Path]:
    key, cert = directory / "client.key", directory / "client.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=billing",
            *(["-passout", f"pass:{passphrase}"] if passphrase else ["-nodes"]),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_a_client_certificate_loads_and_an_encrypted_key_is_refused(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, passphrase=None)
    kafka = KafkaSettings(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=key)
    assert kafka.client_kwargs()["ssl_context"] is not None
    cert, key = _self_signed(tmp_path, passphrase="secret")
    # No prompt on a terminal: a clear error naming both files.
    with pytest.raises(KafkaSettingsError, match="RETENTION_KAFKA_SSL_KEYFILE="):
        KafkaSettings(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=key).ssl_context()
