"""The end-to-end bench still measures what it says: a small round of both contestants.

Runs whole service processes (three of ours, three of the article's consumer), so it is
`slow`: `make test` runs it, plain `pytest` does not. Numbers are not checked here —
speed is the bench's business — only that both finish and the bench's checks hold.
"""

from __future__ import annotations

import pytest

from bench import e2e
from tests.e2e.harness import PRODUCT_SERVICES

pytestmark = pytest.mark.slow


async def test_both_contestants_finish_with_the_expected_effects() -> None:
    users = e2e.Users.make(60)
    got = await e2e.compare(60, 0)

    for name in ("ours", "seed"):
        result = got[name]
        assert result["entities"] == len(users.due) == 56
        check = result["check"]
        assert (check["held_touched"], check["young_touched"], check["due_missed"]) == (0, 0, 0)
        assert check["users_table_wrong"] == 0
        assert set(PRODUCT_SERVICES) <= set(result["milestones_s"])
    assert got["ours"]["check"]["applied_twice"] == 0
    assert got["ours"]["check"]["applied_missing"] == 0
    assert {"purged", "published", "completed"} <= set(got["ours"]["milestones_s"])
    assert got["ours"]["seconds"] == got["ours"]["milestones_s"]["completed"]
    seed_done = max(got["seed"]["milestones_s"][s] for s in PRODUCT_SERVICES)
    assert got["seed"]["seconds"] == seed_done
    assert got["seed"]["check"]["applied_twice"] is None
    for name in ("ours", "seed"):
        # The milestone poller's database work is reported apart from the contestant's.
        assert set(got[name]["cpu_s"]) >= {"bench", "postgres", "poller"}
        assert got[name]["polls"] >= 1


async def test_ours_alone_finishes_with_the_expected_effects() -> None:
    got = await e2e.alone(60)

    assert got["entities"] == 56
    check = got["check"]
    assert (check["held_touched"], check["young_touched"], check["due_missed"]) == (0, 0, 0)
    assert (check["applied_twice"], check["applied_missing"]) == (0, 0)
    assert got["seconds"] == got["milestones_s"]["completed"]
