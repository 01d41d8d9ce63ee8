"""Holds name exactly the rows they protect: known types, ids in the id column's form.

Each case was accepted before and protected nothing: `Order:42` (an unknown type),
`order:042` (ids matched by exact text), an upper-case UUID, a Cyrillic look-alike.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    delete,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.clock import FrozenClock
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import EntityTypes, HoldError, create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from tests.policy.conftest import NOW

meta = MetaData()
TABLES = {
    "ticket": Table("hold_tickets", meta, Column("id", Integer, primary_key=True)),
    "order": Table("hold_orders", meta, Column("id", BigInteger, primary_key=True)),
    "cart": Table("hold_carts", meta, Column("id", Uuid, primary_key=True)),
    "user": Table("hold_users", meta, Column("id", Text, primary_key=True)),
}
for table in TABLES.values():
    table.append_column(Column("created_at", DateTime(timezone=True), nullable=False))

POLICIES = parse_policies(
    "policies:\n"
    + "".join(
        f"  - {{name: {t}s, table: {table.name}, entity_type: {t}, timestamp_column: created_at,"
        f" retention: 1d, action: delete, legal_basis: test}}\n"
        for t, table in TABLES.items()
    )
)
KNOWN = "known types: cart, order, ticket, user"


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)


@pytest.fixture
async def types(tables: AsyncEngine) -> EntityTypes:
    async with tables.connect() as conn:
        return await entity_types(conn, POLICIES)


CART = uuid.UUID("6f1c2e4a-0b5d-4c8e-9a7f-3d2b1e0c9a8b")


@pytest.mark.parametrize(
    ("given_text", "stored"),
    [
        ("order:42", ("order", "42")),
        ("order:042", ("order", "42")),
        ("order:+42", ("order", "42")),
        ("order: 42 ", ("order", "42")),
        ("order:-0", ("order", "0")),
        ("order:9223372036854775807", ("order", "9223372036854775807")),
        ("ticket:2147483647", ("ticket", "2147483647")),
        (f"cart:{str(CART).upper()}", ("cart", str(CART))),
        (f"cart:{{{CART}}}", ("cart", str(CART))),
        (f"cart:{CART.hex}", ("cart", str(CART))),
        ("user:Alice", ("user", "Alice")),
        ("user:a:b", ("user", "a:b")),
    ],
)
def test_ids_are_stored_in_the_id_columns_text_form(
    types: EntityTypes, given_text: str, stored: tuple[str, str]
) -> None:
    assert types.resolve(given_text) == [stored]


@pytest.mark.parametrize(
    ("given_text", "message"),
    [
        ("Order:42", "unknown entity type 'Order'"),
        ("оrder:42", "unknown entity type 'оrder'"),  # a Cyrillic о
        ("orders:42", "unknown entity type 'orders'"),
        ("order:4x", "the id of order is a 64-bit integer"),
        ("order:٤٢", "the id of order is a 64-bit integer"),  # Arabic-Indic digits
        ("order:４２", "the id of order is a 64-bit integer"),  # full-width digits
        ("order:9223372036854775808", "64-bit integer"),
        ("ticket:2147483648", "the id of ticket is a 32-bit integer"),
        ("order:1.0", "64-bit integer"),
        ("cart:42", "the id of cart is a uuid"),
        ("cart:6f1c2e4a-0b5d-4c8e-9a7f-3d2b1e0c9a8", "uuid"),
        ("nocolon", "write TYPE:ID"),
    ],
)
def test_unknown_types_and_unparsable_ids_are_refused_naming_the_known_types(
    types: EntityTypes, given_text: str, message: str
) -> None:
    with pytest.raises(HoldError, match=message) as raised:
        types.resolve(given_text)
    if message != "write TYPE:ID":
        assert KNOWN in str(raised.value)


async def test_a_hold_on_a_non_canonical_id_protects_the_row(
    tables: AsyncEngine, types: EntityTypes, settings: Settings
) -> None:
    old = NOW - timedelta(days=3)
    async with tables.begin() as conn:
        await conn.execute(
            insert(TABLES["order"]), [{"id": i, "created_at": old} for i in (42, 43)]
        )
        await conn.execute(insert(TABLES["cart"]), [{"id": CART, "created_at": old}])
        await create_hold(
            conn,
            entities=["order:042", f"cart:{str(CART).upper()}"],
            types=types,
            reason="case",
            created_by="legal",
            now=NOW,
        )
    report = await Runner(tables, POLICIES, settings, clock=FrozenClock(NOW)).run()
    assert report.ok, report.as_dict()
    async with tables.connect() as conn:
        assert set((await conn.execute(select(TABLES["order"].c.id))).scalars()) == {42}
        assert set((await conn.execute(select(TABLES["cart"].c.id))).scalars()) == {CART}


def test_cli_refuses_with_exit_2_naming_the_known_types(
    tables: AsyncEngine, coordinator_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    policy_file = tmp_path_factory.mktemp("holds") / "policies.yaml"
    policy_file.write_text(
        "policies:\n"
        + "".join(
            f"  - {{name: {t}s, table: {table.name}, entity_type: {t}, "
            "timestamp_column: created_at, retention: 1d, action: delete, legal_basis: test}\n"
            for t, table in TABLES.items()
        )
    )
    env = {"RETENTION_DATABASE_URL": coordinator_db, "RETENTION_POLICIES": str(policy_file)}
    runner = CliRunner()
    base = ["holds", "create", "--reason", "r", "--by", "legal"]
    for bad in ("Order:42", "order:4x", "cart:42"):
        result = runner.invoke(app, [*base, bad], env=env)
        assert result.exit_code == 2, (bad, result.output)
        assert KNOWN in " ".join(result.output.split()), result.output
    result = runner.invoke(app, [*base, "order:042", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"order:42"' in result.stdout
    result = runner.invoke(app, [*base, "order:1"], env={"RETENTION_DATABASE_URL": coordinator_db})
    assert result.exit_code == 2
    assert "RETENTION_POLICIES" in result.output


# --- for any hold accepted, no policy touches a row of that entity ------------------------

ROW_IDS = {"ticket": [1, 7, 42], "order": [5, 42, 2**40], "cart": [CART, uuid.UUID(int=9)]}
ROW_IDS["user"] = ["alice", "Alice", "42", " bob"]


def spellings(entity_type: str, value: object) -> st.SearchStrategy[str]:
    """Ways a person might write this id: some name the row, some look alike and don't."""
    plain = str(value)
    variants = {plain, plain.upper(), plain.lower(), f" {plain} ", f"0{plain}", f"+{plain}"}
    variants |= {plain.replace("-", ""), f"{{{plain}}}", plain.replace("a", "а")}  # Cyrillic а
    return st.sampled_from(sorted(variants)) | st.text(max_size=12)


hold_texts = st.sampled_from(sorted(ROW_IDS)).flatmap(
    lambda t: st.tuples(
        st.sampled_from([t, t.upper(), t.title(), t.replace("o", "о")]),
        st.sampled_from(ROW_IDS[t]).flatmap(lambda v: spellings(t, v)),
    ).map(lambda pair: f"{pair[0]}:{pair[1]}")
)


def names_row(entity_type: str, held_id: str, row_id: object) -> bool:
    """Whether the stored (type, id) of an accepted hold is this row's entity."""
    if isinstance(row_id, uuid.UUID):
        return uuid.UUID(held_id) == row_id
    if isinstance(row_id, int):
        return int(held_id) == row_id
    return held_id == row_id


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(wanted=st.lists(hold_texts, min_size=1, max_size=4))
async def test_for_any_hold_accepted_no_policy_touches_a_row_of_that_entity(
    tables: AsyncEngine, types: EntityTypes, settings: Settings, wanted: list[str]
) -> None:
    old = NOW - timedelta(days=3)
    taken = [w for w in wanted if _accepted(types, w)]
    accepted = {pair for w in taken for pair in types.resolve(w)}
    async with tables.begin() as conn:
        await conn.execute(text("TRUNCATE legal_hold_entities, legal_holds CASCADE"))
        for entity_type, table in TABLES.items():
            await conn.execute(delete(table))
            await conn.execute(
                insert(table), [{"id": i, "created_at": old} for i in ROW_IDS[entity_type]]
            )
        if taken:
            await create_hold(
                conn, entities=taken, types=types, reason="p", created_by="t", now=NOW
            )
    report = await Runner(tables, POLICIES, settings, clock=FrozenClock(NOW)).run()
    assert report.ok, report.as_dict()
    async with tables.connect() as conn:
        for entity_type, table in TABLES.items():
            left = set((await conn.execute(select(table.c.id))).scalars())
            held = {
                row
                for row in ROW_IDS[entity_type]
                for t, i in accepted
                if t == entity_type and names_row(t, i, row)
            }
            # Held rows stay; every other row was due and went (so the check can fail).
            assert left == held, (entity_type, wanted, accepted)


def _accepted(types: EntityTypes, entity: str) -> bool:
    try:
        types.resolve(entity)
    except HoldError:
        return False
    return True
