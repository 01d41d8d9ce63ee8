"""The containers mode's own guarantees: mode selection, free ports, and a container whose
port is taken being an error rather than a silent stand-in (tests/containers.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests import infra
from tests.containers import POSTGRES_IMAGE, POSTGRES_READY, HostNetworkContainer, free_port


def test_mode_is_one_of_three(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(infra.MODE_VARIABLE, "docker")
    with pytest.raises(RuntimeError, match="containers, local or auto"):
        infra.infra_mode()
    monkeypatch.setenv(infra.MODE_VARIABLE, "local")
    assert infra.infra_mode() == "local"


def test_auto_keeps_a_broker_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(infra.MODE_VARIABLE, "auto")
    monkeypatch.setenv("RETENTION_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert infra.infra_mode() == "local"


def test_free_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    taken: set[int] = set()
    ports = [free_port(taken) for _ in range(20)]
    assert len(set(ports)) == len(ports) == len(taken)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in ports:
        assert 20000 <= port < low
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


@pytest.mark.containers
def test_a_second_server_on_a_taken_port_fails_instead_of_standing_in() -> None:
    session = infra.active_containers()
    if session is None:
        pytest.fail("needs RETENTION_TEST_INFRA=containers (`make test-containers`)")
    second = HostNetworkContainer(POSTGRES_IMAGE, POSTGRES_READY, timeout_s=60)
    second.with_envs(POSTGRES_PASSWORD="other", PGPORT=str(session.postgres_port))
    try:
        with pytest.raises(RuntimeError, match=r"exited|after start"):
            second.start()
    finally:
        second.stop()
    session.postgres.assert_running()
