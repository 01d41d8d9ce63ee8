"""The bench's result file: fixed schema, and the docs generated from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench import docs, results


def test_phase_takes_medians_of_rounds_and_the_ratio_against_its_limit() -> None:
    entry = results.phase(
        "publish",
        1000,
        [
            {"ours": 10.0, "seed": 1.0, "limit": 100.0},
            {"ours": 30.0, "seed": 3.0, "limit": 100.0},
            {"ours": 20.0, "seed": 2.0, "limit": 50.0},
        ],
    )
    assert set(entry) == {"ours", "seed", "limit", "ratio", "goal", "unit", "rows", "round"}
    assert (entry["ours"], entry["seed"], entry["limit"]) == (20.0, 2.0, 100.0)
    assert [r["ratio"] for r in entry["round"]] == [0.1, 0.3, 0.4]
    assert entry["ratio"] == 0.3
    assert (entry["goal"], entry["unit"], entry["rows"]) == (0.3, "events/s", 1000)


def test_end_to_end_has_no_limit_so_its_ratio_is_against_the_seed() -> None:
    entry = results.phase("e2e", 940, [{"ours": 600.0, "seed": 150.0}])
    assert entry["ratio"] == 4.0
    assert entry["limit"] is None


def _result() -> dict[str, object]:
    return {
        "schema": results.SCHEMA,
        "commit": "abc",
        "finished_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cores": 2, "cpu": "x", "postgres": "15", "kafka": "4.1.1", "python": "3.11"},
        "load": {"start": [1.0, 1.0, 1.0], "end": [2.0, 2.0, 2.0]},
        "settings": {
            "rows": 100,
            "held": 1,
            "young": 5,
            "rounds": 1,
            "e2e_users": 0,
            "e2e_entities": 0,
        },
        "phases": {"publish": results.phase("publish", 10, [{"ours": 40.0, "limit": 100.0}])},
        "checks": {"ours.held_touched": 0},
        "e2e": {},
    }


def test_docs_regenerate_only_the_marked_block(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    path = results.write(_result(), "20260101T000000Z")
    assert json.loads(path.read_text())["phases"]["publish"]["ratio"] == 0.4
    doc = f"# prose stays\n{docs.BEGIN}\nold table\n{docs.END}\nmore prose\n"
    rendered = docs.render(doc, results.markdown(*results.newest()))
    assert rendered.startswith("# prose stays\n")
    assert rendered.endswith("more prose\n")
    assert "old table" not in rendered
    assert "| publish | 10 | events/s | – | 40.00 |" in rendered
    assert "≥ 0.3: **reached**" in rendered


def test_docs_refuse_a_page_without_markers() -> None:
    with pytest.raises(SystemExit):
        docs.render("# no markers\n", "table")


def test_ours_alone_is_a_phase_of_its_own_without_a_seed() -> None:
    alone = {
        "entities": 1000,
        "seconds": 2.0,
        "entities_per_s": 500.0,
        "milestones_s": {"purged": 0.5, "completed": 2.0},
        "polls": 9,
        "cpu_s": {
            "notifications": 0.1,
            "billing": 0.2,
            "bench": 0.3,
            "postgres": 0.4,
            "poller": 0.05,
        },
        "check": {"held_touched": 0, "applied_twice": 0},
    }
    raw = {"rounds": [{}], "e2e_alone": alone}

    detail = bench_main.e2e_detail(raw)
    assert set(detail) == {"ours_alone"}
    cpu = detail["ours_alone"]["cpu_ms_per_entity"]
    # The milestone poller's database work is its own part, not the services' or postgres'.
    assert cpu == pytest.approx({"services": 0.3, "bench": 0.3, "postgres": 0.4, "poller": 0.05})
    assert detail["ours_alone"]["milestones_s"] == {"purged": 0.5, "completed": 2.0}

    entry = results.phase("e2e.alone", alone["entities"], [{"ours": alone["entities_per_s"]}])
    assert (entry["ours"], entry["seed"], entry["ratio"], entry["goal"]) == (
        500.0,
        None,
        None,
        None,
    )


def _contestant(cpu_s: dict[str, float]) -> dict[str, Any]:
    """One end-to-end contestant of 1,000 entities in 2 s with these CPU seconds."""
    return {
        "entities": 1000,
        "seconds": 2.0,
        "entities_per_s": 500.0,
        "milestones_s": {"completed": 2.0},
        "polls": 9,
        "cpu_s": cpu_s,
        "check": {},
    }


def test_serve_replicas_are_parts_of_their_own_not_services() -> None:
    """Ours' `retention serve` replicas ("serve-N") are reported each and summed, never
    counted with the services; a contestant without replicas has no such parts."""
    ours = _contestant(
        {
            "billing": 0.2,
            "serve-1": 0.1,
            "serve-2": 0.15,
            "bench": 0.05,
            "postgres": 0.4,
            "poller": 0.01,
        }
    )
    seed = {**ours, "cpu_s": {"seed-billing": 0.5, "bench": 0.1, "postgres": 0.3, "poller": 0.01}}

    detail = bench_main.e2e_detail({"rounds": [{"e2e": {"ours": ours, "seed": seed}}]})

    assert detail["ours"]["cpu_ms_per_entity"] == pytest.approx(
        {
            "services": 0.2,
            "serve": 0.25,
            "serve-1": 0.1,
            "serve-2": 0.15,
            "bench": 0.05,
            "postgres": 0.4,
            "poller": 0.01,
        }
    )
    assert set(detail["seed"]["cpu_ms_per_entity"]) == {"services", "bench", "postgres", "poller"}


def test_database_and_server_shares_are_parts_of_their_own_not_services() -> None:
    """The service database's backends (a share of `postgres`) and the whole PostgreSQL
    server and broker are reported apart: added to the services they counted the services'
    database work twice (files of sessions 12-16 did)."""
    got = _contestant(
        {
            "billing": 0.2,
            "notifications": 0.1,
            "bench": 0.05,
            "postgres": 0.4,
            "postgres_services": 0.15,
            "poller": 0.01,
            "postgres_server": 0.5,
            "kafka": 0.3,
        }
    )

    cpu = bench_main.e2e_detail({"rounds": [{}], "e2e_alone": got})["ours_alone"]

    assert cpu["cpu_ms_per_entity"] == pytest.approx(
        {
            "services": 0.3,
            "bench": 0.05,
            "postgres": 0.4,
            "postgres_services": 0.15,
            "poller": 0.01,
            "postgres_server": 0.5,
            "kafka": 0.3,
        }
    )


def test_the_header_says_how_many_replicas_ours_ran_on_when_the_file_says() -> None:
    result = _result()
    assert "replica" not in results.markdown(Path("old.json"), result)
    result["settings"] = {**result["settings"], "e2e_replicas": 2}  # type: ignore[dict-item]
    assert "(ours on 2 `retention serve` replicas)" in results.markdown(Path("new.json"), result)
