"""Reading one entity's archived rows, for `retention archive read` and its HTTP route."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import CoordinatorError
from coordinator.copies.crypto.keystore import open_keystore
from coordinator.erasure.execute import typed_id
from coordinator.policy.binding import BoundPolicy, bind_policies
from coordinator.policy.model import Action, PolicySet
from coordinator.purge.archive import read_archived
from coordinator.settings import Settings

__all__ = ["ArchiveNotFound", "read_entity"]


class ArchiveNotFound(CoordinatorError, LookupError):
    """No such archive policy, or the entity cannot be in its archive."""


def _where(bound: BoundPolicy, entity_type: str, entity_id: str) -> Any:
    """The archive rows of the entity: the policy's own entities by id, or a subject's."""
    archive = bound.archive
    assert archive is not None
    if entity_type == bound.policy.entity_type:
        column = archive.c[bound.id_column.name]
    elif bound.subject is not None and entity_type == bound.subject.entity_type:
        column = archive.c[bound.subject.column]
    else:
        raise ArchiveNotFound(f"policy {bound.name!r} archives no {entity_type!r} entities")
    value = typed_id(column, entity_id)
    if value is None:
        raise ArchiveNotFound(f"{entity_id!r} cannot be a {entity_type} id of this archive")
    return column == value


async def read_entity(
    engine: AsyncEngine,
    settings: Settings,
    policies: PolicySet,
    policy: str,
    entity_type: str,
    entity_id: str,
) -> list[dict[str, Any]]:
    """The entity's archived rows under `policy`, opened.

    Raises:
        ArchiveNotFound: unknown policy, no archive, or an entity it cannot hold.
        KeyStoreError: the key store is not configured.
        CryptoShredded, ArchiveTampered: from `read_archived`.
    """
    async with engine.connect() as conn:
        bound, issues = await bind_policies(conn, policies, settings, only=[policy])
    if policy not in bound:
        found = "; ".join(str(i) for i in issues.get(policy, [])) or "unknown policy"
        raise ArchiveNotFound(f"policy {policy!r}: {found}")
    chosen = bound[policy]
    if chosen.policy.action is not Action.ARCHIVE or not chosen.archive_exists:
        raise ArchiveNotFound(f"policy {policy!r} has no archive")
    assert chosen.archive is not None
    where = _where(chosen, entity_type, entity_id)
    keys = open_keystore(settings, engine)
    try:
        async with engine.connect() as conn:
            return await read_archived(
                conn, chosen.archive, keys, id_column=chosen.id_column.name, where=where
            )
    finally:
        await keys.aclose()
