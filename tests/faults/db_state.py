"""Whole-database fingerprints for the fault scenarios: "nothing changed" as one comparison."""

from __future__ import annotations

from sqlalchemy import text

from coordinator.store.db import make_engine

__all__ = ["table_checksums"]


async def table_checksums(url: str) -> dict[str, str]:
    """An md5 of every public table's rows in a fixed order, coordinator tables included."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            names = list(
                (
                    await conn.execute(
                        text(
                            "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public' ORDER BY table_name"
                        )
                    )
                ).scalars()
            )
            sums = {}
            for name in names:
                quoted = '"' + name.replace('"', '""') + '"'
                sums[name] = (
                    await conn.execute(
                        text(
                            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                            f"FROM {quoted} t"
                        )
                    )
                ).scalar_one()
            return sums
    finally:
        await engine.dispose()
