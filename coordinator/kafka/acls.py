"""The Kafka ACLs that go with the product's topics (SPEC §9 "Kafka transport").

Only the coordinator's principal writes what services act on (the events and holds topics); each
service's principal reads them, writes acks, its registration and dead letters, and
joins its own consumer group only. One list, used three ways: `retention kafka acls`
prints `kafka-acls.sh` commands for an operator, `--apply` creates them through the
Admin API (the secured test broker of `infra/infra.sh secure-start`), and
docs/security.md's table is checked against it.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest

from coordinator import CoordinatorError
from schemas import KafkaSettings, Topics, service_group

__all__ = [
    "COORDINATOR_PRINCIPAL",
    "Acl",
    "AclError",
    "apply_acls",
    "kafka_acls_commands",
    "retention_acls",
    "service_principal",
]

COORDINATOR_PRINCIPAL = "User:coordinator"

ResourceType = Literal["topic", "group"]
Operation = Literal["Read", "Write", "Describe"]

# Kafka's wire codes (org.apache.kafka.common.resource / acl).
_RESOURCE_CODES: dict[ResourceType, int] = {"topic": 2, "group": 3}
_OPERATION_CODES: dict[Operation, int] = {"Read": 3, "Write": 4, "Describe": 8}
_PATTERN_LITERAL = 3
_PERMISSION_ALLOW = 3

READ: tuple[Operation, ...] = ("Read", "Describe")
WRITE: tuple[Operation, ...] = ("Write", "Describe")


class AclError(CoordinatorError, RuntimeError):
    """The broker refused to create an ACL; the message says which and why."""


@dataclass(frozen=True, order=True)
class Acl:
    """One allow rule: `principal` may do `operations` on a literal resource."""

    principal: str
    resource_type: ResourceType
    resource: str
    operations: tuple[Operation, ...]


def service_principal(service: str) -> str:
    """The principal of a service whose SASL user (or certificate CN) is its name."""
    return f"User:{service}"


def coordinator_written(topics: Topics) -> tuple[str, ...]:
    """Topics only the coordinator writes: what services act on and trust."""
    return (topics.events, topics.erased, topics.holds, topics.audit)


def service_written(topics: Topics) -> tuple[str, ...]:
    """Topics the services write: acks, registrations, dead letters."""
    return (topics.acks, topics.services, topics.dlq)


def retention_acls(
    topics: Topics,
    *,
    services: Mapping[str, str],
    tracker_group: str,
    coordinator: str = COORDINATOR_PRINCIPAL,
) -> list[Acl]:
    """Every ACL the product needs: the coordinator's, then each service's.

    Args:
        topics: The deployment's topics (`RETENTION_KAFKA_TOPIC_PREFIX`).
        services: Service name → its principal; each consumes in `retention.<name>`.
        tracker_group: The tracker's consumer group (`RETENTION_TRACKER_GROUP_ID`).
        coordinator: The principal of the relay and the tracker.
    """
    acls = [Acl(coordinator, "topic", topic, WRITE) for topic in coordinator_written(topics)]
    acls += [
        # The tracker dead-letters acks it cannot read; `retention dlq` reads them all.
        Acl(coordinator, "topic", topics.dlq, WRITE),
        Acl(coordinator, "topic", topics.dlq, READ),
        Acl(coordinator, "topic", topics.acks, READ),
        Acl(coordinator, "topic", topics.services, READ),
        # `retention audit verify` compares the chain with the last published head.
        Acl(coordinator, "topic", topics.audit, READ),
        Acl(coordinator, "group", tracker_group, ("Read",)),
    ]
    for name, principal in services.items():
        acls += [Acl(principal, "topic", topic, READ) for topic in coordinator_written(topics)]
        acls += [Acl(principal, "topic", topic, WRITE) for topic in service_written(topics)]
        acls.append(Acl(principal, "group", service_group(name), ("Read",)))
    return acls


def kafka_acls_commands(
    acls: Iterable[Acl], *, bootstrap: str, command_config: str | None = None
) -> list[str]:
    """`kafka-acls.sh --add` command lines creating `acls`: one per principal and set of
    operations (the tool grants every operation on every resource it is given)."""
    grouped: dict[tuple[str, tuple[Operation, ...]], list[Acl]] = {}
    for acl in acls:
        grouped.setdefault((acl.principal, acl.operations), []).append(acl)
    commands = []
    for (principal, operations), members in grouped.items():
        words = ["kafka-acls.sh", "--bootstrap-server", bootstrap]
        if command_config is not None:
            words += ["--command-config", command_config]
        words += ["--add", "--allow-principal", principal]
        for operation in operations:
            words += ["--operation", operation]
        for acl in members:
            words += [f"--{acl.resource_type}", acl.resource]
        commands.append(shlex.join(words))
    return commands


async def apply_acls(kafka: KafkaSettings, acls: Sequence[Acl]) -> int:
    """Create `acls` on the cluster `kafka` reaches, as its (super or Alter-Cluster) principal;
    return how many bindings were created (existing ones count again: creation is idempotent).

    aiokafka's admin client has no `create_acls`; its protocol module has the request,
    sent here on the admin client's connection.
    """
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    created = 0
    try:
        client: Any = admin._client
        for acl in acls:
            for operation in acl.operations:
                request = CreateAclsRequest(
                    _RESOURCE_CODES[acl.resource_type],
                    acl.resource,
                    _PATTERN_LITERAL,
                    acl.principal,
                    "*",
                    _OPERATION_CODES[operation],
                    _PERMISSION_ALLOW,
                )
                response = await client.send(client.get_random_node(), request)
                for code, message in response.creation_responses:
                    if code != 0:
                        raise AclError(
                            f"allow {acl.principal} {operation} on {acl.resource_type} "
                            f"{acl.resource}: error {code} {message or ''}".rstrip()
                        )
                created += 1
    finally:
        await admin.close()
    return created
