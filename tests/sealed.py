"""A migrated data database with its key store in a database of its own, a KEK file and a
policy file: what the encrypted-archive and vault tests start from."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.copies.crypto.keystore import open_keystore
from coordinator.copies.crypto.provider import write_kek
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from tests import infra

__all__ = ["Sealed", "sealed_databases"]


@dataclass
class Sealed:
    url: str
    keystore_url: str
    kek: Path
    policies: Path
    engine: AsyncEngine
    """On the data's database."""
    settings: Settings

    def environ(self) -> dict[str, str]:
        """The `retention` command's environment: these databases, KEK and policies."""
        return {
            **os.environ,
            "RETENTION_DATABASE_URL": self.url,
            "RETENTION_KEYSTORE_URL": self.keystore_url,
            "RETENTION_KEK_FILE": str(self.kek),
            "RETENTION_POLICIES": str(self.policies),
        }


@asynccontextmanager
async def sealed_databases(
    postgres_url: str, name: str, folder: Path, policies: str
) -> AsyncIterator[Sealed]:
    """Both databases (dropped afterwards), the key store's schema, and the KEK and
    `policies` written as files in `folder`."""
    url = await infra.create_database(postgres_url, name)
    keystore_url = await infra.create_database(postgres_url, f"{name}_keys")
    engine = make_engine(url)
    try:
        await upgrade(url)
        kek = folder / "kek.hex"
        write_kek(kek)
        policy_file = folder / "policies.yaml"
        policy_file.write_text(policies)
        settings = Settings(database_url=url, keystore_url=keystore_url, kek_file=kek)
        keys = open_keystore(settings, engine)
        await keys.create_schema()
        await keys.aclose()
        yield Sealed(url, keystore_url, kek, policy_file, engine, settings)
    finally:
        await engine.dispose()
        await infra.drop_database(url)
        await infra.drop_database(keystore_url)
