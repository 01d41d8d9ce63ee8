"""The key store: data keys kept wrapped by the KEK, apart from the data (SPEC §12).

A data key exists unwrapped only in memory, for the batch or the read that needs it.
Destroying it deletes its one wrapped copy: every value sealed under it is then
crypto-shredded, in the data's database and in every backup of it, as soon as no backup
of the key store older than the destruction remains.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    LargeBinary,
    Select,
    Text,
    Uuid,
    any_,
    bindparam,
    column,
    delete,
    func,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, Insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError
from coordinator.copies.crypto.envelope import new_keys
from coordinator.copies.crypto.provider import KeyProvider, LocalKeyProvider
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.tables import data_keys

__all__ = ["DataKey", "KeyStore", "KeyStoreError", "open_keystore"]


class KeyStoreError(CoordinatorError):
    """The key store cannot be used as configured."""


@dataclass(frozen=True, slots=True)
class DataKey:
    key_id: uuid.UUID
    key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"DataKey({self.key_id})"


class KeyStore:
    def __init__(self, engine: AsyncEngine, provider: KeyProvider, *, owns_engine: bool) -> None:
        self.engine = engine
        self.provider = provider
        self._owns_engine = owns_engine

    async def aclose(self) -> None:
        if self._owns_engine:
            await self.engine.dispose()

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(lambda sync: data_keys.create(sync, checkfirst=True))

    async def keys_for(
        self, scopes: Collection[str], *, create: bool, now: datetime | None = None
    ) -> dict[str, DataKey]:
        """The data keys of `scopes`, unwrapped once each; missing ones are created
        (wrapped once before they are stored) when `create`, else left out."""
        wanted = sorted(set(scopes))
        if not wanted:
            return {}
        async with self.engine.begin() as conn:
            found = await self._select(conn, wanted)
            missing = [scope for scope in wanted if scope not in found]
            if create and missing:
                found.update(await self._create(conn, missing, now))
            return found

    async def _create(
        self, conn: AsyncConnection, scopes: list[str], now: datetime | None
    ) -> dict[str, DataKey]:
        """New data keys for `scopes`, each wrapped once, inserted in one statement.

        The keys it inserted are returned as they were made, never read back and
        unwrapped; a scope a concurrent creator stored first keeps that creator's key
        (the one its data is sealed under), read back like any existing key.
        """
        fresh = dict(zip(scopes, new_keys(len(scopes)), strict=True))
        given = (
            func.unnest(
                bindparam("scopes", scopes, type_=ARRAY(Text)),
                bindparam(
                    "wrapped",
                    [self.provider.wrap(fresh[s]) for s in scopes],
                    type_=ARRAY(LargeBinary),
                ),
            )
            .table_valued(column("scope", Text), column("wrapped", LargeBinary))
            .render_derived()
        )
        created = func.coalesce(
            bindparam("created_at", now, type_=DateTime(timezone=True)), func.now()
        )
        # PostgreSQL draws the key ids (a version 4 UUID from its strong random source)
        # and returns them as one array: a uuid.UUID built and printed in Python costs
        # ~1.7 µs a key.
        insert = pg_insert(data_keys).from_select(
            ["scope", "key_id", "kek_id", "wrapped", "created_at"],
            select(
                given.c.scope,
                func.gen_random_uuid(),
                literal(self.provider.kek_id, Text),
                given.c.wrapped,
                created,
            ),
        )

        def written(insert: Insert) -> Select[Any]:
            done = insert.returning(data_keys.c.scope, data_keys.c.key_id).cte("written")
            return select(
                type_coerce(func.array_agg(done.c.scope), ARRAY(Text)).label("scopes"),
                type_coerce(func.array_agg(done.c.key_id), ARRAY(Uuid)).label("key_ids"),
            )

        try:
            # A plain insert first: ON CONFLICT's speculative insertion costs PostgreSQL
            # more per row than the rest of the insert, and a scope is stored by someone
            # else between the look-up and here only in a race.
            async with conn.begin_nested():
                row = (await conn.execute(written(insert))).one()
        except IntegrityError:
            row = (await conn.execute(written(insert.on_conflict_do_nothing()))).one()
        keys = {
            scope: DataKey(key_id, fresh[scope])
            for scope, key_id in zip(row.scopes or (), row.key_ids or (), strict=True)
        }
        inserted = keys.keys()
        lost = [scope for scope in scopes if scope not in inserted]
        if lost:
            keys.update(await self._select(conn, lost))
        return keys

    async def _select(self, conn: AsyncConnection, scopes: list[str]) -> dict[str, DataKey]:
        rows = await conn.execute(
            select(
                data_keys.c.scope, data_keys.c.key_id, data_keys.c.kek_id, data_keys.c.wrapped
            ).where(data_keys.c.scope == any_(bindparam("scopes", scopes, type_=ARRAY(Text))))
        )
        return {
            row.scope: DataKey(row.key_id, self.provider.unwrap(row.wrapped, row.kek_id))
            for row in rows
        }

    async def keys_by_id(self, key_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, DataKey]:
        """The data keys still in the store among `key_ids`, unwrapped."""
        if not key_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(data_keys.c.key_id, data_keys.c.kek_id, data_keys.c.wrapped).where(
                    data_keys.c.key_id.in_(list(key_ids))
                )
            )
            return {
                row.key_id: DataKey(row.key_id, self.provider.unwrap(row.wrapped, row.kek_id))
                for row in rows
            }

    async def rewrap(self, old: KeyProvider, *, batch_size: int = 1000) -> int:
        """Re-wrap every data key wrapped under `old`'s KEK with this store's provider;
        the data is not touched. Each batch commits: an interrupted rotation resumes."""
        done = 0
        while True:
            async with self.engine.begin() as conn:
                rows = (
                    await conn.execute(
                        select(data_keys.c.scope, data_keys.c.wrapped)
                        .where(data_keys.c.kek_id == old.kek_id)
                        .order_by(data_keys.c.scope)
                        .limit(batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if not rows:
                    return done
                for row in rows:
                    data_key = old.unwrap(row.wrapped, old.kek_id)
                    await conn.execute(
                        update(data_keys)
                        .where(data_keys.c.scope == row.scope)
                        .values(kek_id=self.provider.kek_id, wrapped=self.provider.wrap(data_key))
                    )
                done += len(rows)

    @property
    def separate(self) -> bool:
        """Whether the store is a database of its own (RETENTION_KEYSTORE_URL), so that
        nothing else commits in its transactions."""
        return self._owns_engine

    async def key_id_of(self, scope: str) -> uuid.UUID | None:
        """The id of the scope's data key (nothing unwrapped), or None."""
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(data_keys.c.key_id).where(data_keys.c.scope == scope))
            ).scalar_one_or_none()

    async def destroy(self, scope: str, *, conn: AsyncConnection | None = None) -> uuid.UUID | None:
        """Delete the scope's data key; its id, or None when there was none. With `conn`
        (a transaction on this store's database, when it is not separate) the deletion
        commits with whatever else that transaction writes."""
        statement = (
            delete(data_keys).where(data_keys.c.scope == scope).returning(data_keys.c.key_id)
        )
        if conn is not None:
            return (await conn.execute(statement)).scalar_one_or_none()
        async with self.engine.begin() as own:
            return (await own.execute(statement)).scalar_one_or_none()


def open_keystore(settings: Settings, data_engine: AsyncEngine) -> KeyStore:
    """The configured key store: RETENTION_KEYSTORE_URL's database, else the data's own
    (docs/operations.md: then backups of the data also hold the keys)."""
    if settings.kek_file is None:
        raise KeyStoreError(
            "archive and restore_window policies need RETENTION_KEK_FILE "
            "(retention keys generate --kek --out DIR)"
        )
    try:
        provider = LocalKeyProvider.from_file(settings.kek_file)
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"RETENTION_KEK_FILE: {type(exc).__name__}: {exc}") from None
    if settings.keystore_url is None:
        return KeyStore(data_engine, provider, owns_engine=False)
    return KeyStore(
        make_engine(settings.keystore_url.get_secret_value()), provider, owns_engine=True
    )
