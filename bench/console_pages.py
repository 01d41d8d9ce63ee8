"""Server time of every console page on the demo's data ×100 (issue #19: goal < 300 ms).

    python -m bench.console_pages            # SCALE=100 (the demo's volume ×100)
    BENCH_CONSOLE_SCALE=10 python -m bench.console_pages
    BENCH_CONSOLE_KEEP=1 python -m bench.console_pages   # keep the database to EXPLAIN

A fresh database gets what one `make demo` leaves behind, multiplied: per 1× there are
1,045 events (purchase_records 300 → billing; support_tickets and abandoned_carts 300 each,
no service; closed_accounts 145 → billing, notifications, preferences, search_index), so
880 expected acknowledgements and as many ledger rows, 2 holds over 505 entities, one run
of six policies, two erasure requests and ~580 audit rows. Services stay the demo's four.
Answers are 94% completed, 3% pending, 2% overdue and 1% failed, so every drill-down has
rows.

Each page is requested through the ASGI app in this process (no network, a signed-in
session cookie): 3 warm-up requests, then `BENCH_CONSOLE_REPEAT` (20) timed ones. Server
time is the wall time of one request: routing, the session check, the queries and the
template. Prints a table; writes `.cache/bench/console_pages.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext, create_app
from coordinator.api.health import KafkaHealth
from coordinator.api.tokens import Scope, TokenStore, add_token, new_token
from coordinator.clock import SystemClock
from coordinator.evidence.audit import AuditEntry, append
from coordinator.policy.model import load_policies
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import (
    ack_ledger,
    erasure_parts,
    erasure_requests,
    event_status,
    expected_acks,
    legal_hold_entities,
    legal_holds,
    policy_results,
    runs,
    service_registry,
)
from demo.keys import ensure_keys
from schemas import KafkaSettings
from tests import infra
from tests.outbox import insert_rows

ROOT = Path(__file__).resolve().parent.parent
# The demo's policy file declares its services with the keys `make demo` makes on first start.
ensure_keys()
POLICIES = load_policies(ROOT / "demo" / "policies.yaml")
SERVICES = tuple(s.name for s in POLICIES.services)
"""The demo's declared services: the example services (tests/test_compose.py checks it)."""


def _handling(entity_type: str, action: str) -> tuple[str, ...]:
    return tuple(s.name for s in POLICIES.services if (entity_type, action) in s.pairs())


# Per 1× of the demo: (policy, action, entity type, events, expected services).
EVENTS = (
    ("purchase_records", "anonymize", "order", 300, _handling("order", "anonymize")),
    ("support_tickets", "archive", "ticket", 300, ()),
    ("abandoned_carts", "delete", "cart", 300, ()),
    ("closed_accounts", "delete", "user", 145, _handling("user", "delete")),
)
BUSIEST = max(SERVICES, key=lambda s: sum(n for *_, n, expected in EVENTS if s in expected))
"""The service whose drill-down pages have the most rows."""
CHUNK = 5000


def _answer(n: int) -> str:
    """94% completed, 3% pending, 2% overdue, 1% failed, spread evenly."""
    slot = n % 100
    return (
        "completed"
        if slot < 94
        else "pending"
        if slot < 97
        else "overdue"
        if slot < 99
        else "failed"
    )


async def _insert(engine: AsyncEngine, table: Any, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        for start in range(0, len(rows), CHUNK):
            await conn.execute(insert(table), rows[start : start + CHUNK])


async def seed(engine: AsyncEngine, scale: int, now: datetime) -> dict[str, Any]:
    outbox_rows, status_rows, expected_rows, ledger_rows = [], [], [], []
    offset = 0
    for policy, action, entity_type, per_demo, services in EVENTS:
        for n in range(per_demo * scale):
            event_id = uuid.uuid4()
            published = now - timedelta(days=30) + timedelta(seconds=(n * 97) % (29 * 86400))
            answer = _answer(n) if services else "completed"
            deadline = (
                now - timedelta(hours=1) if answer == "overdue" else published + timedelta(days=30)
            )
            entity_id = f"{entity_type}-{n:07d}"
            outbox_rows.append(
                {
                    "event_id": event_id,
                    "run_id": uuid.uuid4(),
                    "policy": policy,
                    "event_type": action,
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                    "legal_basis": "demo",
                    "fields": [],
                    "initiated_at": published - timedelta(minutes=1),
                    "deadline": deadline,
                    "created_at": published - timedelta(minutes=1),
                    "published_at": published,
                }
            )
            done = answer == "completed"
            status_rows.append(
                {
                    "event_id": event_id,
                    "policy": policy,
                    "event_type": action,
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                    "initiated_at": published - timedelta(minutes=1),
                    "published_at": published,
                    "deadline": deadline,
                    "state": answer if answer != "failed" else "pending",
                    "expected": len(services),
                    "completed_at": published + timedelta(seconds=2) if done else None,
                    "overdue_at": deadline if answer == "overdue" else None,
                    "tracked_at": published,
                    "updated_at": published,
                }
            )
            for service in services:
                status = {"overdue": "pending"}.get(answer, answer)
                acked = published + timedelta(seconds=1) if status != "pending" else None
                expected_rows.append(
                    {
                        "event_id": event_id,
                        "service": service,
                        "status": status,
                        "records_affected": 1 if status == "completed" else 0,
                        "attempt": 1 if acked else None,
                        "detail": "handler raised TimeoutError" if status == "failed" else "",
                        "acknowledged_at": acked,
                        "first_ack_at": acked,
                        "acks_received": 1 if acked else 0,
                    }
                )
                if acked is not None:
                    offset += 1
                    ledger_rows.append(
                        {
                            "received_at": acked,
                            "kafka_topic": "data.retention.acks",
                            "kafka_partition": 0,
                            "kafka_offset": offset,
                            "event_id": event_id,
                            "service": service,
                            "entity_type": entity_type,
                            "entity_id": entity_id,
                            "status": status,
                            "records_affected": 1 if status == "completed" else 0,
                            "attempt": 1,
                            "detail": "",
                            "acknowledged_at": acked,
                            "accepted": True,
                        }
                    )
    await _insert(
        engine,
        service_registry,
        [
            {
                "service": s.name,
                "entity_type": t,
                "action": a,
                "sdk_version": "0.1.0",
                "first_seen": now - timedelta(days=40),
                "last_seen": now - timedelta(days=1),
            }
            for s in POLICIES.services
            for t, a in sorted(s.pairs())
        ],
    )
    # Written as outbox batches: each row gets the event id its batch gives it.
    old_ids = [row["event_id"] for row in outbox_rows]
    await insert_rows(engine, outbox_rows)
    renamed = {old: row["event_id"] for old, row in zip(old_ids, outbox_rows, strict=True)}
    for row in (*status_rows, *expected_rows, *ledger_rows):
        row["event_id"] = renamed[row["event_id"]]
    await _insert(engine, event_status, status_rows)
    await _insert(engine, expected_acks, expected_rows)
    await _insert(engine, ack_ledger, ledger_rows)

    run_ids = [uuid.uuid4() for _ in range(scale)]
    await _insert(
        engine,
        runs,
        [
            {
                "id": run_id,
                "started_at": now - timedelta(days=i),
                "finished_at": now - timedelta(days=i) + timedelta(seconds=30),
                "status": "ok",
                "trigger": "schedule:global",
            }
            for i, run_id in enumerate(run_ids)
        ],
    )
    await _insert(
        engine,
        policy_results,
        [
            {
                "run_id": run_id,
                "policy": policy.name,
                "action": policy.action,
                "status": "ok",
                "processed": 300,
                "held": 100,
                "events": 300,
                "duration_s": 1.2,
                "oldest_unprocessed_days": float(i % 40),
                "started_at": now - timedelta(days=i),
                "finished_at": now - timedelta(days=i) + timedelta(seconds=20),
            }
            for i, run_id in enumerate(run_ids)
            for policy in POLICIES.policies
        ],
    )

    hold_ids = [f"hold-{i:04d}" for i in range(2 * scale)]
    per_hold = 505 * scale // len(hold_ids)
    await _insert(
        engine,
        legal_holds,
        [
            {"id": h, "reason": f"case {h}", "created_by": "legal-team", "created_at": now}
            for h in hold_ids
        ],
    )
    await _insert(
        engine,
        legal_hold_entities,
        [
            {"hold_id": h, "entity_type": "user", "entity_id": f"held-{i}-{k}"}
            for i, h in enumerate(hold_ids)
            for k in range(per_hold)
        ],
    )
    async with engine.begin() as conn:
        entries = [
            AuditEntry("hold.create", "legal-team", {"hold_id": h, "entities": []})
            for h in hold_ids
        ]
        entries += [
            AuditEntry("events_tracked", "tracker", {"events": [str(uuid.uuid4())]})
            for _ in range(580 * scale - len(hold_ids))
        ]
        for start in range(0, len(entries), CHUNK):
            await append(conn, entries[start : start + CHUNK], at=now)
    # The demo files two erasure requests: one completes, one stays on hold.
    request_ids = [uuid.uuid4() for _ in range(2 * scale)]
    await _insert(
        engine,
        erasure_requests,
        [
            {
                "id": request_id,
                "subject_type": "user",
                "subject_id": f"user-{i:07d}",
                "regulation": "gdpr" if i % 2 else "ccpa",
                "reference": f"DSR-{i:05d}",
                "status": "completed" if i % 2 else "on_hold",
                "received_at": now - timedelta(days=i % 40),
                "due_at": now - timedelta(days=i % 40) + timedelta(days=30),
                "created_at": now - timedelta(days=i % 40),
                "created_by": "legal-team",
                "completed_at": now if i % 2 else None,
                "holds": [] if i % 2 else ["dispute-42"],
            }
            for i, request_id in enumerate(request_ids)
        ],
    )
    await _insert(
        engine,
        erasure_parts,
        [
            {
                "request_id": request_id,
                "policy": policy.name,
                "table_name": policy.table,
                "action": policy.action,
                "outcome": "done",
                "rows": 3,
                "legal_basis": policy.legal_basis,
                "done_at": now,
            }
            for request_id in request_ids
            for policy in POLICIES.policies
        ],
    )
    return {
        "erasure_requests": len(request_ids),
        "request_id": str(request_ids[1]),
        "events": len(status_rows),
        "expected_acks": len(expected_rows),
        "ledger": len(ledger_rows),
        "runs": len(run_ids),
        "holds": len(hold_ids),
        "held_entities": per_hold * len(hold_ids),
        "run_id": str(run_ids[0]),
        "hold_id": hold_ids[0],
        "user": f"user-{0:07d}",
    }


def pages(seeded: dict[str, Any]) -> list[str]:
    user = seeded["user"]
    return [
        "/ui/",
        "/ui/overview/services",
        "/ui/runs",
        f"/ui/runs/{seeded['run_id']}",
        "/ui/holds",
        "/ui/holds?all=true",
        f"/ui/holds/{seeded['hold_id']}",
        "/ui/services",
        *(
            f"/ui/services/{BUSIEST}?state={s}"
            for s in ("overdue", "pending", "failed", "completed", "waived")
        ),
        "/ui/erasure-requests",
        "/ui/erasure-requests?status=on_hold",
        f"/ui/erasure-requests/{seeded['request_id']}",
        f"/ui/entities/user/{user}",
        f"/ui/entities/user/{user}/certificate.json",
    ]


async def measure(url: str, seeded: dict[str, Any], repeat: int) -> list[dict[str, Any]]:
    engine = make_engine(url, pool_size=4)
    health = KafkaHealth(KafkaSettings())
    with tempfile.TemporaryDirectory() as folder:
        tokens_file = Path(folder) / "tokens.yaml"
        token = new_token("bench", Scope.READ)
        add_token(tokens_file, token.entry)
        ctx = ApiContext(
            engine=engine,
            kafka_health=health,
            registry=CollectorRegistry(),
            clock=SystemClock(),
            tokens=TokenStore(tokens_file),
            policy_set=POLICIES,
            global_schedule="0 3 * * *",
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        results = []
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            signed = await client.post("/ui/sign-in", data={"token": token.token})
            assert signed.status_code == 303, signed.text
            for path in pages(seeded):
                for _ in range(3):
                    warm = await client.get(path)
                    assert warm.status_code == 200, (path, warm.status_code)
                times = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200
                times.sort()
                results.append(
                    {
                        "page": path,
                        "bytes": len(response.content),
                        "median_ms": round(statistics.median(times), 1),
                        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
                        "max_ms": round(times[-1], 1),
                    }
                )
    await health.close()
    await engine.dispose()
    return results


async def main() -> None:
    scale = int(os.environ.get("BENCH_CONSOLE_SCALE", "100"))
    repeat = int(os.environ.get("BENCH_CONSOLE_REPEAT", "20"))
    url = await infra.create_database(infra.database_url(), "bench_console")
    try:
        await upgrade(url)
        engine = make_engine(url, pool_size=2)
        started = time.monotonic()
        seeded = await seed(engine, scale, datetime.now(UTC))
        # Statistics as autovacuum would have them on a database that grew to this size.
        async with engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(
                text("ANALYZE")
            )
        await engine.dispose()
        print(f"seeded ×{scale} in {time.monotonic() - started:.0f}s: {seeded}")
        results = await measure(url, seeded, repeat)
    finally:
        if os.environ.get("BENCH_CONSOLE_KEEP"):
            print(f"kept the database: {url.rpartition('/')[2]}")
        else:
            await infra.drop_database(url)
    print("\n| page | median ms | p95 ms | max ms | KiB |\n| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| `{r['page']}` | {r['median_ms']} | {r['p95_ms']} | {r['max_ms']} | "
            f"{r['bytes'] / 1024:.0f} |"
        )
    out = ROOT / ".cache" / "bench" / "console_pages.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "scale": scale,
                "repeat": repeat,
                "seeded": seeded,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "pages": results,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
