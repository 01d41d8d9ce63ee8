"""An integer key's hold check compares the hold's id as the integer it spells
(coordinator/purge/holds.py `integer_value`): for every text and every integer, that
comparison must agree with the text comparison it replaces, `text = id::text`, and no
text may make it fail."""

from __future__ import annotations

import re

from sqlalchemy import BigInteger, Integer, SmallInteger, column, func, select, values
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Text, TypeEngine

from coordinator.purge.holds import integer_value

TEXTS = [
    *("0", "7", "-7", "10", "-10", "99", "100", "2147483647", "-2147483648", "32767"),
    *("999999999999999999", "-999999999999999999", "1000000000000000000"),
    *("-1000000000000000000", "9223372036854775807", "-9223372036854775808"),
    # How no integer prints: each must equal nothing.
    *("9223372036854775808", "-9223372036854775809", "99999999999999999999", "1" + "0" * 30),
    *("007", "-0", "+7", " 7", "7 ", "7.0", "1e1", "0x10", "", "-", "٣", "7\n", "abc"),
    *("00", "-007", "０", "9223372036854775807 "),
]
BIG = [0, 7, -7, 10, -10, 99, 100, 2**31 - 1, -(2**31), 10**18 - 1, -(10**18 - 1), 10**18]
BIG += [-(10**18), 2**63 - 1, -(2**63)]
INT = [0, 7, -7, 10, 2**31 - 1, -(2**31)]
SMALL = [0, 7, -7, 32767, -32768]


async def _disagreements(
    engine: AsyncEngine, ints: list[int], kind: TypeEngine[int]
) -> list[tuple[str, int]]:
    texts = values(column("t", Text), name="texts").data([(t,) for t in TEXTS])
    ids = values(column("i", kind), name="ids").data([(i,) for i in ints])
    t, i = texts.c.t, ids.c.i
    by_value = func.coalesce(integer_value(t) == i, False)
    as_text = t == i.cast(Text)
    async with engine.connect() as conn:
        rows = await conn.execute(select(t, i).where(by_value != as_text))
        return [tuple(r) for r in rows]


async def test_by_value_matches_exactly_the_texts_an_integer_prints_as(
    engine: AsyncEngine,
) -> None:
    for ints, kind in ((BIG, BigInteger()), (INT, Integer()), (SMALL, SmallInteger())):
        assert await _disagreements(engine, ints, kind) == []


async def test_each_integer_text_is_found_and_no_other(engine: AsyncEngine) -> None:
    """The check above is not vacuous: the texts that print an id do match it."""
    texts = values(column("t", Text), name="texts").data([(t,) for t in TEXTS])
    async with engine.connect() as conn:
        got = await conn.execute(select(texts.c.t, integer_value(texts.c.t)))
        matched = {t: v for t, v in got if v is not None}
    printed = {t: int(t) for t in TEXTS if re.fullmatch(r"0|-?[1-9][0-9]*", t)}
    assert matched == {t: i for t, i in printed.items() if -(2**63) <= i < 2**63}
    assert {"7", "-9223372036854775808", "9223372036854775807"} <= matched.keys()
