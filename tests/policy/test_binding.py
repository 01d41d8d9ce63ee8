"""Validation against the live database: every problem, named, with its YAML line."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.policy.binding import bind_policies
from coordinator.policy.model import parse_policies
from coordinator.settings import Settings

BAD = """\
policies:
  - name: wrong_columns
    table: people
    id_column: ref
    timestamp_column: born_on
    retention: 1d
    action: anonymize
    legal_basis: x
    anonymize:
      short_name: hash
      age: redact
      code: "null"
      nickname: fake_email
      missing: redact
  - name: no_table
    table: nowhere
    timestamp_column: ts
    retention: 1d
    action: delete
    legal_basis: x
  - name: own_table
    table: legal_holds
    timestamp_column: created_at
    retention: 1d
    action: delete
    legal_basis: x
  - name: bad_archive
    table: people
    id_column: id
    timestamp_column: seen_at
    retention: 1d
    action: archive
    legal_basis: x
  - name: fine
    table: people
    timestamp_column: seen_at
    retention: 1d
    action: delete
    legal_basis: x
"""


async def test_every_database_problem_is_named(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS people, people_archive"))
        await conn.execute(
            text(
                "CREATE TABLE people (id bigint PRIMARY KEY, ref text, born_on date, "
                "seen_at timestamptz, short_name varchar(20), age int, code text NOT NULL, "
                "nickname text)"
            )
        )
        await conn.execute(text("CREATE TABLE people_archive (id bigint, ref text)"))
    policy_set = parse_policies(BAD, "bad.yaml")
    async with engine.connect() as conn:
        bound, issues = await bind_policies(conn, policy_set, Settings(hash_secret=""))
    assert set(bound) == {"fine"}
    messages = {name: [str(i) for i in found] for name, found in issues.items()}
    assert messages["wrong_columns"] == [
        "line 4: policy 'wrong_columns': 'ref' is neither the primary key nor unique",
        "line 5: policy 'wrong_columns': column 'born_on' is DATE, "
        "not timestamp / timestamp with time zone",
        "line 10: policy 'wrong_columns': short_name: hash: column 'short_name' holds "
        "20 characters; this strategy writes 64",
        "line 10: policy 'wrong_columns': short_name: hash needs RETENTION_HASH_SECRET set",
        "line 10: policy 'wrong_columns': age: redact: column 'age' is INTEGER, not a text column",
        "line 10: policy 'wrong_columns': code: null: column 'code' is NOT NULL",
        "line 10: policy 'wrong_columns': table 'people' has no column 'missing'",
    ]
    assert messages["no_table"] == ["line 16: policy 'no_table': table 'nowhere' does not exist"]
    assert messages["own_table"] == [
        "line 22: policy 'own_table': table 'legal_holds' belongs to the coordinator itself"
    ]
    assert messages["bad_archive"] == [
        "line 32: policy 'bad_archive': archive table 'people_archive' is a plain "
        "(unencrypted) archive: encrypt it in place with "
        "`retention archive encrypt --policy bad_archive`"
    ]


async def test_conditions_compile_against_the_table(engine: AsyncEngine) -> None:
    text_ = """\
policies:
  - name: carts
    table: shopping_carts
    timestamp_column: updated_at
    retention: 30d
    action: delete
    legal_basis: x
    conditions: "colour = 'red' AND status = 'abandoned'"
"""
    async with engine.connect() as conn:
        bound, issues = await bind_policies(conn, parse_policies(text_), Settings())
    assert bound == {}
    (issue,) = issues["carts"]
    assert issue.line == 8
    assert "colour" in issue.message


async def test_subject_column_is_checked_against_the_table(engine: AsyncEngine) -> None:
    text_ = """\
policies:
  - name: carts
    table: shopping_carts
    timestamp_column: updated_at
    retention: 30d
    action: delete
    legal_basis: x
    subject: {entity_type: user, column: owner_id}
  - name: sessions
    table: session_logs
    timestamp_column: created_at
    retention: 30d
    action: delete
    legal_basis: x
    subject: {entity_type: user, column: user_id}
"""
    async with engine.connect() as conn:
        bound, issues = await bind_policies(conn, parse_policies(text_), Settings())
    assert set(bound) == {"sessions"}
    assert bound["sessions"].subject_column is not None
    assert bound["sessions"].subject_column.name == "user_id"
    (issue,) = issues["carts"]
    assert issue.line == 8
    assert "no column 'owner_id'" in issue.message
