"""The encrypted archive (SPEC §12): rows sealed under their subject's data key.

An archive row keeps in clear only what finds it (the id, the timestamp, the subject id,
when it was archived and the id of the key); every other column is sealed together,
AES-256-GCM under the data key of the row's subject (of the row's entity when the policy
names no subject). Destroying that key crypto-shreds every archived copy at once.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Uuid,
    bindparam,
    column,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator import CoordinatorError
from coordinator.copies.crypto.envelope import BatchSealer, SealError, open_sealed, seal
from coordinator.copies.crypto.keystore import DataKey, KeyStore

__all__ = [
    "ARCHIVED_AT",
    "KEY_ID",
    "SEALED",
    "ArchiveTampered",
    "CryptoShredded",
    "archive_definition",
    "clear_columns",
    "key_scope",
    "owners",
    "read_archived",
    "seal_row",
    "store_sealed",
]

ARCHIVED_AT = "archived_at"
KEY_ID = "archive_key_id"
SEALED = "archive_sealed"
_OWN_COLUMNS = frozenset({ARCHIVED_AT, KEY_ID, SEALED})


class CryptoShredded(CoordinatorError):
    """The archived rows' data key was destroyed: they can never be read again."""


class ArchiveTampered(CoordinatorError):
    """An archived row does not open under its key: altered, or moved from another row."""


def clear_columns(table: Table, names: Sequence[str]) -> list[str]:
    """The finding columns kept in clear, in table order, without duplicates."""
    return [c.name for c in table.columns if c.name in names]


def archive_definition(table: Table, clear: Sequence[str]) -> Table:
    """`<table>_archive`: the clear columns, archived_at, the key id and the sealed rest."""
    return Table(
        f"{table.name}_archive",
        MetaData(),
        *(Column(c, table.c[c].type, nullable=table.c[c].nullable) for c in clear),
        Column(ARCHIVED_AT, DateTime(timezone=True), nullable=False),
        Column(KEY_ID, Uuid, nullable=False),
        Column(SEALED, LargeBinary, nullable=False),
    )


def key_scope(policy: str, entity_type: str, entity_id: Any) -> str:
    """Whose data key: one per archive policy and subject (or entity), so that a hold on
    one archive's rows never keeps another archive's copies readable, nor the reverse."""
    return f"{policy}/{entity_type}:{entity_id}"


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (Decimal, uuid.UUID, timedelta)):
        return str(value)
    return value


# json.dumps(..., sort_keys=True, separators=(",", ":")) without building an encoder per row.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_JSON_NATIVE = frozenset({str, int, float, bool, type(None)})  # what _plain leaves as it is


def _plaintext(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """The sealed part of a row: its columns as canonical JSON."""
    return _ENCODE({n: v if type(v) in _JSON_NATIVE else _plain(v) for n, v in pairs}).encode()


def _associated(archive: Table, row_id: Any, key_id: uuid.UUID) -> bytes:
    # Binds a sealed value to its archive, its row and its key.
    return f"{archive.name}\x00{row_id}\x00{key_id}".encode()


def seal_row(
    data_key: DataKey,
    archive: Table,
    mapping: Mapping[Any, Any],
    *,
    id_column: str,
    clear: Sequence[str],
) -> bytes:
    """Seal a row's columns other than `clear` (and the archive's own) as one value."""
    plaintext = _plaintext(
        (name, v) for name, v in mapping.items() if name not in clear and name not in _OWN_COLUMNS
    )
    return seal(data_key.key, plaintext, _associated(archive, mapping[id_column], data_key.key_id))


def owners(
    rows: Sequence[Row[Any]],
    *,
    entity_type: str,
    id_column: str,
    subject: tuple[str, str] | None,
) -> list[tuple[str, Any]]:
    """Whose data key seals each row: its subject's (type, id) when it names one
    (`subject`: the subject's type and column), else its own entity's."""
    if not rows:
        return []
    fields = rows[0]._fields
    id_at = fields.index(id_column)
    if subject is None:
        return [(entity_type, row[id_at]) for row in rows]
    kind, subject_at = subject[0], fields.index(subject[1])
    return [
        (entity_type, row[id_at]) if row[subject_at] is None else (kind, row[subject_at])
        for row in rows
    ]


async def store_sealed(
    conn: AsyncConnection,
    archive: Table,
    rows: Sequence[Row[Any]],
    *,
    id_column: str,
    clear: Sequence[str],
    scopes: Sequence[str],
    keys: KeyStore,
    now: datetime,
    columns: Sequence[str] | None = None,
) -> None:
    """Seal `rows` (each under the key of its scope) and insert them into `archive`, as
    `seal_row` would one at a time.

    `columns`: the names of each row's first values, the archived table's columns (None:
    every value of the row); values after them are not archived. The key store is asked
    once per batch: one unwrap (or wrap) per distinct scope. The rows go into the archive
    in one statement, each column as one array parameter: SQLAlchemy's per-row parameter
    processing of an executemany cost more than the sealing itself.
    """
    if not rows:
        return
    names = list(rows[0]._fields if columns is None else columns)
    sealed_at = [
        (n, name) for n, name in enumerate(names) if name not in clear and name not in _OWN_COLUMNS
    ]
    clear_at = [names.index(name) for name in clear]
    id_at = names.index(id_column)
    data_keys = await keys.keys_for(scopes, create=True, now=now)
    sealer = BatchSealer(len(rows))
    key_ids: list[uuid.UUID] = []
    sealed: list[bytes] = []
    for row, scope in zip(rows, scopes, strict=True):
        data_key = data_keys[scope]
        key_ids.append(data_key.key_id)
        sealed.append(
            sealer.seal(
                data_key.key,
                _plaintext((name, row[n]) for n, name in sealed_at),
                _associated(archive, row[id_at], data_key.key_id),
            )
        )
    arrays = [
        bindparam(f"clear_{n}", [row[at] for row in rows], type_=ARRAY(archive.c[name].type))
        for n, (name, at) in enumerate(zip(clear, clear_at, strict=True))
    ]
    given = (
        func.unnest(
            *arrays,
            bindparam("key_ids", key_ids, type_=ARRAY(Uuid)),
            bindparam("sealed", sealed, type_=ARRAY(LargeBinary)),
        )
        .table_valued(
            *(column(f"clear_{n}", archive.c[name].type) for n, name in enumerate(clear)),
            column("key_id", Uuid),
            column("sealed", LargeBinary),
        )
        .render_derived()
    )
    await conn.execute(
        insert(archive).from_select(
            [*clear, KEY_ID, SEALED, ARCHIVED_AT],
            select(
                *(given.c[f"clear_{n}"] for n in range(len(clear))),
                given.c.key_id,
                given.c.sealed,
                literal(now, DateTime(timezone=True)),
            ),
        )
    )


async def read_archived(
    conn: AsyncConnection,
    archive: Table,
    keys: KeyStore,
    *,
    id_column: str,
    where: Any,
) -> list[dict[str, Any]]:
    """The archived rows `where` selects, opened.

    Raises:
        CryptoShredded: a row's data key is no longer in the key store.
        ArchiveTampered: a row does not open under its key.
    """
    rows = (await conn.execute(select(archive).where(where).order_by(archive.c[id_column]))).all()
    data_keys = await keys.keys_by_id({row._mapping[KEY_ID] for row in rows})
    opened = []
    for row in rows:
        mapping = dict(row._mapping)
        key_id, sealed = mapping.pop(KEY_ID), mapping.pop(SEALED)
        data_key = data_keys.get(key_id)
        if data_key is None:
            raise CryptoShredded(f"archived rows are crypto-shredded: data key {key_id} destroyed")
        try:
            rest = json.loads(
                open_sealed(data_key.key, sealed, _associated(archive, mapping[id_column], key_id))
            )
        except SealError:
            raise ArchiveTampered(
                f"archived row does not open under data key {key_id} (altered or moved)"
            ) from None
        opened.append({**mapping, **rest, KEY_ID: str(key_id)})
    return opened
