"""The product's ACL list (coordinator/kafka/acls.py): its shape, its docs, its commands."""

from __future__ import annotations

import re
import shlex

import pytest
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.kafka.acls import (
    COORDINATOR_PRINCIPAL,
    Acl,
    coordinator_written,
    kafka_acls_commands,
    retention_acls,
)
from schemas import Topics
from tests.infra import ROOT

TOPICS = Topics()
SERVICES = {"billing": "User:billing", "search_index": "User:CN=search-index"}
ACLS = retention_acls(TOPICS, services=SERVICES, tracker_group="retention.tracker")


def allowed(principal: str, operation: str) -> set[str]:
    return {
        a.resource
        for a in ACLS
        if a.principal == principal and a.resource_type == "topic" and operation in a.operations
    }


def test_every_topic_is_visible_to_the_coordinator_and_written_by_someone() -> None:
    # `missing_topics` and /healthz list topics: one the coordinator cannot Describe
    # would look missing, and `serve` would try to create it.
    assert allowed(COORDINATOR_PRINCIPAL, "Describe") == set(TOPICS.all())
    writers = {
        topic
        for principal in [COORDINATOR_PRINCIPAL, *SERVICES.values()]
        for topic in allowed(principal, "Write")
    }
    assert writers == set(TOPICS.all())


@pytest.mark.parametrize("principal", SERVICES.values())
def test_a_service_writes_nothing_it_acts_on_and_reads_no_acks(principal: str) -> None:
    assert allowed(principal, "Write").isdisjoint(coordinator_written(TOPICS))
    assert allowed(principal, "Read") == set(coordinator_written(TOPICS))
    groups = {a.resource for a in ACLS if a.principal == principal and a.resource_type == "group"}
    name = next(n for n, p in SERVICES.items() if p == principal)
    assert groups == {f"retention.{name}"}


def test_the_commands_grant_exactly_the_list() -> None:
    granted: set[tuple[str, str, str, str]] = set()
    for line in kafka_acls_commands(ACLS, bootstrap="b:9093", command_config="admin.properties"):
        words = shlex.split(line)
        assert words[:5] == [
            "kafka-acls.sh",
            "--bootstrap-server",
            "b:9093",
            "--command-config",
            "admin.properties",
        ]
        assert words[5] == "--add"
        pairs = list(zip(words[6::2], words[7::2], strict=True))
        principal = next(v for f, v in pairs if f == "--allow-principal")
        operations = [v for f, v in pairs if f == "--operation"]
        resources = [(f[2:], v) for f, v in pairs if f in ("--topic", "--group")]
        # kafka-acls.sh grants every operation given on every resource given.
        granted |= {(principal, kind, name, op) for kind, name in resources for op in operations}
    assert granted == {
        (a.principal, a.resource_type, a.resource, op) for a in ACLS for op in a.operations
    }


def test_docs_table_is_the_list() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    section = doc.split("## Kafka transport and ACLs", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(
        r"^\| `(User:[^`]+)` \| (topic|group) `([^`]+)` \| ([A-Za-z, ]+) \|", section, re.M
    )
    documented = {
        Acl(principal, kind, name, tuple(op.strip() for op in ops.split(",")))
        for principal, kind, name, ops in rows
    }
    generic = retention_acls(
        TOPICS, services={"<service>": "User:<service>"}, tracker_group="retention.tracker"
    )
    assert documented == set(generic)
    assert len(rows) == len(generic)


def test_the_command_prints_for_the_deployment_prefix() -> None:
    result = CliRunner().invoke(
        app,
        ["kafka", "acls", "--service", "billing", "--service", "idx=User:CN=idx"],
        env={"RETENTION_KAFKA_TOPIC_PREFIX": "eu.retention", "RETENTION_TRACKER_GROUP_ID": "eu.t"},
    )
    assert result.exit_code == 0, result.output
    reads = (
        "--operation Read --operation Describe --topic eu.retention --topic eu.retention.erased "
        "--topic eu.retention.holds --topic eu.retention.audit\n"
    )
    assert f"--allow-principal User:billing {reads}" in result.output
    assert "--allow-principal User:CN=idx --operation Read --group retention.idx" in result.output
    assert "--group eu.t" in result.output
    repeated = CliRunner().invoke(app, ["kafka", "acls", "--service", "a", "--service", "a"])
    assert repeated.exit_code == 2
