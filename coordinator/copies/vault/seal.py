"""Sealing deleted rows into the vault, inside the purge batch that deletes them.

The DELETE returns each whole row as PostgreSQL's own JSON (`to_json(table)`), and a
restore turns it back into a row with `json_populate_recordset(NULL::table, …)`: the
database converts both ways, so every column type round-trips as PostgreSQL prints and
parses it (bytea, numeric, arrays, json, intervals) without a Python codec per type.
The JSON is sealed under the data key of the row's subject (of its entity when the
policy names no subject): the same key scope as the encrypted archive, so an erasure
request that destroys the subject's key shreds the vault copies with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, Text, cast, func, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import Label

from coordinator.copies.crypto.envelope import open_sealed, seal
from coordinator.copies.crypto.keystore import KeyStore
from coordinator.store.tables import vault

__all__ = ["DOC", "VaultRow", "associated", "open_row", "row_document", "store_in_vault"]

DOC = "retention_vault_doc"
"""The label of the whole-row JSON a vaulting DELETE returns."""


def row_document(table: Table) -> Label[str]:
    """`to_json(<table>)` of the row a DELETE … RETURNING removes, as text."""
    return cast(func.to_json(table.table_valued()), Text).label(DOC)


def associated(policy: str, entity: str, run_id: uuid.UUID, key_id: uuid.UUID) -> bytes:
    # Binds a sealed row to its policy, entity, run and key: moved onto another vault
    # row, it fails to open instead of restoring someone else's data.
    return f"retention_vault\x00{policy}\x00{entity}\x00{run_id}\x00{key_id}".encode()


@dataclass(frozen=True, slots=True)
class VaultRow:
    """What a vaulting batch knows about one deleted row."""

    entity_id: str
    subject: str | None
    """`type:id`, or None when the policy names no subject or the row has none."""
    scope: str
    document: str


async def store_in_vault(
    conn: AsyncConnection,
    rows: Sequence[VaultRow],
    *,
    policy: str,
    table: str,
    id_column: str,
    entity_type: str,
    run_id: uuid.UUID,
    keys: KeyStore,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Seal `rows` and insert them into the vault, in the caller's (the batch's)
    transaction; one key-store round trip for the batch."""
    if not rows:
        return
    data_keys = await keys.keys_for({row.scope for row in rows}, create=True, now=now)
    values: list[dict[str, Any]] = []
    for row in rows:
        data_key = data_keys[row.scope]
        entity = f"{entity_type}:{row.entity_id}"
        values.append(
            {
                "run_id": run_id,
                "policy": policy,
                "table_name": table,
                "id_column": id_column,
                "entity_type": entity_type,
                "entity_id": row.entity_id,
                "subject": row.subject,
                "scope": row.scope,
                "key_id": data_key.key_id,
                "sealed": seal(
                    data_key.key,
                    row.document.encode(),
                    associated(policy, entity, run_id, data_key.key_id),
                ),
                "deleted_at": now,
                "expires_at": expires_at,
            }
        )
    await conn.execute(insert(vault), values)


def open_row(key: bytes, row: Any) -> str:
    """The JSON document of a vault row (raises `SealError` when it does not open)."""
    entity = f"{row.entity_type}:{row.entity_id}"
    return open_sealed(
        key, row.sealed, associated(row.policy, entity, row.run_id, row.key_id)
    ).decode()
