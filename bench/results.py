"""The bench's result file: one JSON per run, a fixed schema, committed under bench/results/.

    {
      "schema": 1,
      "commit": "<git HEAD>[-dirty]",
      "started_at": "...", "finished_at": "...",
      "machine": {"cores", "cpu", "python", "java", "kafka", "postgres"},
      "load": {"start": [1, 5, 15 min], "end": [...]},
      "settings": {"rows", "rounds", "held", "young", "e2e_users", "e2e_entities",
                   "e2e_alone_users", "e2e_replicas", "seed_events", "event_bytes"},
      "phases": {
        "<phase>": {"ours", "seed", "limit", "ratio", "goal", "unit", "rows",
                    "round": [{"ours", "seed", "limit", "ratio"}, ...]}
      },
      "checks": {"<contestant>.<check>": worst round's count},
      "e2e": {"<contestant>": {"milestones_s": {...}, "cpu_ms_per_entity": {...}}}
    (contestants "ours", "seed", and "ours_alone" when BENCH_E2E_ALONE_USERS ran)
    }

`ours`, `seed`, `limit` and `ratio` of a phase are the medians of its `round` values
(null where a contestant has no such phase). `ratio` is ours / limit, or ours / seed
where the phase has no limit (end to end); `goal` is the ratio the issue asks for (null
when there is none). PHASES below says what each phase's contestants and limit are;
`make bench-docs` renders the newest file into docs/benchmarks.md with it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.infra import ROOT

RESULTS = ROOT / "bench" / "results"
SCHEMA = 1


@dataclass(frozen=True)
class Phase:
    title: str
    unit: str
    limit: str  # what the limit column measures ("" when the phase has none)
    goal: float | None


ACTIONS = ("delete", "anonymize", "archive", "all")
PHASES: dict[str, Phase] = {
    **{
        f"purge.{a}": Phase(f"purge {a}", "rows/s", "raw statement, no events (raw)", 0.5)
        for a in ACTIONS
    },
    **{
        f"purge.{a}.same_work": Phase(
            f"purge {a}, same work", "rows/s", "raw statement + outbox rows (raw+outbox)", None
        )
        for a in ACTIONS
    },
    "anonymize.rerun": Phase(
        "anonymize re-run, nothing new due (rows: anonymized before)",
        "s",
        "the same re-run with the mark deleted (the walk every re-run made before marks)",
        None,
    ),
    "publish": Phase(
        "publish", "events/s", "Java producer, our records and keys, after warm-up", 0.3
    ),
    "publish.confluent": Phase(
        "publish, relay on confluent-kafka (`fast` extra)",
        "events/s",
        "Java producer, our records and keys, after warm-up",
        0.3,
    ),
    "consume": Phase("consume", "events/s", "ConsumerPerformance", None),
    "e2e": Phase("end to end (3 services, acked and tracked)", "entities/s", "", 20.0),
    # BENCH_E2E_ALONE_USERS: ours alone at a size where the seed would take hours.
    "e2e.alone": Phase("end to end, ours alone (rows: due users)", "entities/s", "", None),
    "rss": Phase("peak RSS of `retention run`", "MB", "", None),
    # `make bench-scale` (bench/scale.py, files under bench/results/scale/):
    "scale.track": Phase(
        "tracking a new batch with the history present",
        "events/s",
        "the same batch on an empty database",
        round(1 / 1.2, 3),
    ),
    "scale.prune.audit": Phase(
        "prune audit rows past retention (monthly partitions dropped)",
        "s",
        "database time (s)",
        None,
    ),
    "scale.prune.ack_ledger": Phase(
        "prune ack ledger rows past retention (row deletes)",
        "s",
        "database time (s)",
        None,
    ),
    "scale.prune.outbox": Phase(
        "prune outbox rows of events completed > 30 d ago (row deletes)",
        "s",
        "database time (s)",
        None,
    ),
    "scale.prune.event_status": Phase(
        "prune event status and expected acks past retention (row deletes)",
        "s",
        "database time (s)",
        None,
    ),
}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def phase(name: str, rows: int, rounds: list[dict[str, float | None]]) -> dict[str, Any]:
    """A phase entry from its per-round {ours, seed, limit} values."""
    spec = PHASES[name]
    per_round = []
    for r in rounds:
        ours, seed, limit = r.get("ours"), r.get("seed"), r.get("limit")
        base = limit if spec.limit else seed
        ratio = ours / base if ours is not None and base else None
        per_round.append({"ours": ours, "seed": seed, "limit": limit, "ratio": ratio})
    return {
        **{k: _median([r[k] for r in per_round]) for k in ("ours", "seed", "limit", "ratio")},
        "goal": spec.goal,
        "unit": spec.unit,
        "rows": rows,
        "round": per_round,
    }


def write(result: dict[str, Any], stamp: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path


def newest() -> tuple[Path, dict[str, Any]]:
    """The newest result file (names are UTC timestamps, so they sort by time)."""
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        raise SystemExit("no bench/results/*.json yet: run `make bench` first")
    return files[-1], json.loads(files[-1].read_text())


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.2f}{unit}"


def _span(entry: dict[str, Any], key: str) -> str:
    values = [r[key] for r in entry["round"] if r[key] is not None]
    if not values:
        return "–"
    median = _num(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({_num(min(values))}–{_num(max(values))})"


def _verdict(entry: dict[str, Any]) -> str:
    goal, ratio = entry["goal"], entry["ratio"]
    if goal is None:
        return "–"
    if ratio is None:
        return f"≥ {goal:g}: not measured"
    return f"≥ {goal:g}: **{'reached' if ratio >= goal else 'not reached'}**"


def markdown(path: Path, result: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md: the run's header, table, checks."""
    s, m, load = result["settings"], result["machine"], result["load"]
    lines = [
        f"From `bench/results/{path.name}` (commit `{result['commit']}`, finished "
        f"{result['finished_at']}): **{s['rows']:,} rows** over five tables "
        f"({s['held']:,} held, {s['young']:,} young per table), {s['rounds']} interleaved "
        f"round(s), end to end {s['e2e_entities']:,} due of {s['e2e_users']:,} users"
        f"{_replicas(s)}; "
        f"{m['cores']} cores ({m['cpu']}), PostgreSQL {m['postgres']}, Kafka {m['kafka']}, "
        f"Python {m['python']}; load average {load['start'][0]:.1f} at the start, "
        f"{load['end'][0]:.1f} at the end. Values: median (min–max) of rounds.",
        "",
        "| phase | rows | unit | seed (article) | ours | limit | ours / limit | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in PHASES.items():
        entry = result["phases"].get(name)
        if entry is None:
            continue
        limit = f"{spec.limit}: {_span(entry, 'limit')}" if spec.limit else "–"
        ratio = _span(entry, "ratio")
        if not spec.limit and entry["ratio"] is not None:
            ratio = f"ours/seed {ratio}"
        lines.append(
            f"| {spec.title} | {entry['rows']:,} | {spec.unit} | {_span(entry, 'seed')} "
            f"| {_span(entry, 'ours')} "
            f"| {limit} | {ratio} | {_verdict(entry)} |"
        )
    checks = result["checks"]
    lines += [
        "",
        "Correctness (worst round): "
        + "; ".join(
            f"{c}: " + ", ".join(f"{k.split('.', 1)[1].replace('_', ' ')} {v}" for k, v in group)
            for c, group in _by_contestant(checks).items()
        )
        + ".",
    ]
    for contestant, detail in result.get("e2e", {}).items():
        marks = sorted(detail["milestones_s"].items(), key=lambda kv: kv[1])
        cpu = ", ".join(f"{p} {ms:.2f}" for p, ms in detail["cpu_ms_per_entity"].items())
        lines.append("")
        lines.append(
            f"End to end, {contestant}: milestones (median s from the clock's start) "
            + ", ".join(f"{mark} {sec:.1f}" for mark, sec in marks)
            + f"; CPU ms per entity {cpu}."
        )
    return "\n".join(lines)


def _replicas(settings: dict[str, Any]) -> str:
    """How ours ran end to end, for files that say (`e2e_replicas`, since session 8)."""
    count = settings.get("e2e_replicas")
    if not count:
        return ""
    return f" (ours on {count} `retention serve` replica{'s' if count > 1 else ''})"


def _by_contestant(checks: dict[str, int]) -> dict[str, list[tuple[str, int]]]:
    grouped: dict[str, list[tuple[str, int]]] = {}
    for key, value in checks.items():
        grouped.setdefault(key.split(".", 1)[0], []).append((key, value))
    return grouped
