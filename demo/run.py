"""`make demo`: the whole system on demo data, end to end, with a summary.

Steps (each fails with a message naming what did not come up):
 1. fresh databases `retention_demo` (coordinator) and `retention_demo_services`;
 2. migrate, seed the five seed policies' tables, a users table, legal holds and the services'
    own data (demo/seed.py; policies demo/policies.yaml);
 3. start `retention serve` and the four example services (`search_index` is a Faust app)
    as subprocesses, and wait until each one's registration reached the tracker;
 4. trigger a run over HTTP (POST /v1/runs) and wait until every event is completed;
 5. file two erasure requests over HTTP (POST /v1/erasure-requests): one for an active user,
    which completes once every service acknowledged, and one for a user under a subject
    hold, which stays `on_hold` naming the hold;
 6. verify one deleted user on demand (POST /v1/entities/user/{id}/verify): every service
    answers how many records it still holds, and the entity must come out `verified`;
 7. print the summary, then stop what it started (`--keep` leaves it running).

Each demo uses its own topic prefix, so repeated demos never see each other's records;
the topics are deleted when the demo stops (kept with `--keep`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from consumer_sdk import configure_logging
from coordinator.copies.crypto.provider import write_kek
from coordinator.outbox.lookup import event_counts
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import event_status, service_registry
from coordinator.tracking import queries
from demo import keys
from demo.requests import RequestsFailed, file_demo_requests
from demo.seed import POLICIES, Seeded, seed_coordinator, seed_services
from demo.tokens import DEMO_TOKENS, create_demo_tokens
from schemas import KafkaSettings, async_database_url
from services import EXAMPLES

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "demo"
SERVICES = tuple(e.name for e in EXAMPLES)
SPEC_METRICS = (
    "retention_records_processed_total",
    "retention_records_held_total",
    "retention_run_duration_seconds",
    "retention_oldest_unprocessed_days",
    "retention_events_published_total",
    "retention_acks_total",
    "retention_pending_acks",
    "retention_overdue_events",
)
# Wide enough for the summary tables when piped (CI logs, `make demo | tee`).
out = Console(width=None if sys.stdout.isatty() else 132)


class DemoFailed(RuntimeError):
    """Something did not come up; the message names it."""


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise DemoFailed(
                f"{self.name} exited with code {self.proc.returncode}; "
                f"last lines of {self.log}:\n{self.tail()}"
            )


@dataclass
class Demo:
    settings: Settings
    port: int
    scale: int
    timeout_s: float
    name: str = "retention_demo"
    run_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    processes: list[Process] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def tokens_file(self) -> Path:
        return WORK / f"{self.name}-tokens.yaml"

    @property
    def kek_file(self) -> Path:
        return WORK / f"{self.name}-kek.hex"

    def make_tokens(self) -> None:
        """New tokens for every demo run; the old file (and its tokens) go. The archive's
        key-encryption key is kept: it must outlive the archive it protects."""
        self.tokens_file.unlink(missing_ok=True)
        self.tokens = create_demo_tokens(self.tokens_file)
        if not self.kek_file.exists():
            write_kek(self.kek_file)

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    @property
    def database_url(self) -> str:
        return _with_database(self.settings.database_url.get_secret_value(), self.name)

    @property
    def services_url(self) -> str:
        return _with_database(
            self.settings.database_url.get_secret_value(), f"{self.name}_services"
        )

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka.model_copy(
            update={"topic_prefix": f"demo.{self.run_tag}.data.retention"}
        )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.split("?", 1)[0].rpartition("/")
    return f"{base}/{name}"


def step(message: str) -> None:
    out.print(f"[bold cyan]▶[/bold cyan] {message}")


async def wait_until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    *,
    timeout_s: float,
    demo: Demo,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in demo.processes:
            process.check_alive()
        try:
            if await check():
                return
        except (httpx.TransportError, OSError):
            pass  # not up yet
        await asyncio.sleep(0.25)
    logs = ", ".join(str(p.log) for p in demo.processes)
    raise DemoFailed(f"timed out after {timeout_s:.0f}s waiting for {what} (logs: {logs})")


# --- databases and data ----------------------------------------------------------------


async def recreate_databases(demo: Demo) -> None:
    admin = create_async_engine(
        async_database_url(_with_database(demo.database_url, "postgres")),
        isolation_level="AUTOCOMMIT",
    )
    try:
        async with admin.connect() as conn:
            for name in (demo.name, f"{demo.name}_services"):
                # Checked against _NAME in main(): safe to format into DDL.
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        raise DemoFailed(f"PostgreSQL is not reachable ({exc}): run `make infra-up`") from exc
    finally:
        await admin.dispose()


# --- processes -------------------------------------------------------------------------


def start_process(demo: Demo, name: str, argv: list[str], env: dict[str, str]) -> Process:
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and entry points
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
        )
    process = Process(name, proc, log)
    demo.processes.append(process)
    return process


def common_env(demo: Demo) -> dict[str, str]:
    return {
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": demo.kafka.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": demo.kafka.topic_prefix,
        "RETENTION_LOG_LEVEL": "INFO",
    }


def start_serve(demo: Demo, policies: Path) -> Process:
    retention = str(Path(sys.executable).parent / "retention")
    env = {
        **common_env(demo),
        "RETENTION_DATABASE_URL": demo.database_url,
        "RETENTION_POLICIES": str(policies),
        "RETENTION_HASH_SECRET": "demo-hash-secret",
        "RETENTION_API_TOKENS_FILE": str(demo.tokens_file),
        "RETENTION_KEK_FILE": str(demo.kek_file),
        "RETENTION_SERVE_GAUGES_INTERVAL_S": "2",
        "RETENTION_SERVE_ERASURE_INTERVAL_S": "1",
        "RETENTION_TRACKER_POLL_INTERVAL_S": "0.5",
        **keys.signing_env(keys.COORDINATOR),
    }
    return start_process(demo, "serve", [retention, "serve", "--port", str(demo.port)], env)


def start_service(demo: Demo, name: str) -> Process:
    env = {
        **common_env(demo),
        "RETENTION_SERVICE_DATABASE_URL": demo.services_url,
        "RETENTION_CONSUMER_POLL_TIMEOUT_S": "0.2",
        **keys.signing_env(name),
    }
    return start_process(demo, name, [sys.executable, "-m", f"services.{name}"], env)


def stop_processes(demo: Demo) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for process in demo.processes:
        if process.proc.poll() is None:
            process.proc.send_signal(signal.SIGTERM)
    for process in demo.processes:
        try:
            codes[process.name] = process.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            codes[process.name] = process.proc.wait()
    return codes


async def delete_topics(kafka: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics(kafka.topics.all())
    finally:
        await admin.close()


# --- the run ---------------------------------------------------------------------------


async def metrics_text(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def samples(body: str, name: str) -> dict[str, float]:
    """`{labels}` → value for one metric name in a Prometheus text body."""
    found = {}
    for line in body.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) :].rpartition(" ")
            found[labels] = float(value)
    return found


def label(labels: str, key: str) -> str:
    for part in labels.strip("{}").split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v.strip('"')
    return ""


async def run_demo(demo: Demo) -> tuple[dict[str, Any], Seeded]:
    started = time.monotonic()
    step(f"signing keys in {keys.ensure_keys().relative_to(ROOT)} (made once, then reused)")
    step(f"fresh databases {demo.name} and {demo.name}_services")
    await recreate_databases(demo)
    step("migrating the coordinator database")
    await upgrade(demo.database_url)

    step(f"seeding the five seed policies' tables and users (scale {demo.scale})")
    engine = make_engine(demo.database_url, pool_size=2)
    try:
        seeded, orders_of = await seed_coordinator(engine, demo.scale)
        service_rows = await seed_services(demo.services_url, orders_of)
        total = sum(seeded.rows.values())
        out.print(
            f"  {total} rows in {len(seeded.rows)} tables, {seeded.held_entities} entities "
            f"under legal hold; services: " + ", ".join(f"{k} {v}" for k, v in service_rows.items())
        )

        step(f"API tokens (retention tokens create) in {demo.tokens_file}")
        demo.make_tokens()
        step(f"starting retention serve on {demo.api} (topics {demo.kafka.topic_prefix}.*)")
        start_serve(demo, POLICIES)
        async with httpx.AsyncClient(
            base_url=demo.api, timeout=10, headers=demo.auth("demo-reader")
        ) as client:

            async def healthy() -> bool:
                return (await client.get("/healthz")).status_code == 200

            await wait_until("retention serve /healthz", healthy, timeout_s=90, demo=demo)
            step("starting the example services: " + ", ".join(SERVICES))
            for name in SERVICES:
                start_service(demo, name)

            async def registered() -> bool:
                async with engine.connect() as conn:
                    found = set(
                        (
                            await conn.execute(select(service_registry.c.service).distinct())
                        ).scalars()
                    )
                return set(SERVICES) <= found

            await wait_until("the services' registrations", registered, timeout_s=90, demo=demo)

            async def oldest_known() -> bool:
                return (
                    len(samples(await metrics_text(client), "retention_oldest_unprocessed_days"))
                    >= 6
                )

            await wait_until("the oldest-unprocessed gauges", oldest_known, timeout_s=30, demo=demo)
            before = samples(await metrics_text(client), "retention_oldest_unprocessed_days")

            step("triggering a run: POST /v1/runs")
            accepted = await client.post("/v1/runs", headers=demo.auth("demo-writer"))
            if accepted.status_code != 202:
                raise DemoFailed(f"POST /v1/runs answered {accepted.status_code}: {accepted.text}")
            status_url = accepted.json()["status_url"]
            run: dict[str, Any] = {}

            async def run_finished() -> bool:
                nonlocal run
                run = (await client.get(status_url)).json()
                return run.get("finished_at") is not None

            await wait_until("the run to finish", run_finished, timeout_s=demo.timeout_s, demo=demo)
            if run["status"] != "ok":
                errors = {p["policy"]: p["errors"] for p in run["policies"] if p["errors"]}
                raise DemoFailed(f"the run finished with errors: {errors}")

            step("waiting until every service has acknowledged every event")

            async def all_completed() -> bool:
                async with engine.connect() as conn:
                    events, _ = await event_counts(conn)
                    done = await conn.scalar(
                        select(func.count())
                        .select_from(event_status)
                        .where(event_status.c.state == "completed")
                    )
                return bool(events) and events == done

            await wait_until(
                "every event completed", all_completed, timeout_s=demo.timeout_s, demo=demo
            )
            # Let the tracker's gauges and the leader's oldest-unprocessed gauge catch up.
            await asyncio.sleep(3)
            body = await metrics_text(client)
            async with engine.connect() as conn:
                report = await queries.report(conn, since=datetime.now(UTC) - timedelta(hours=1))
                erased = await erasure_counts(demo.services_url)
            example_user = next(u for u in seeded.users_due[len(seeded.users_due) // 2 :])
            entity = (await client.get(f"/v1/entities/user/{example_user}")).json()
            requests = await erasure_requests(demo, client, seeded)
            verification = await verify_entity(demo, client, example_user)
            shredded = await shredded_archive(demo, client, requests[0], seeded)
            step("signing in to the console with the read token")
            await check_console(client, demo.tokens["demo-reader"])
        summary = {
            "run": run,
            "before": before,
            "metrics": body,
            "report": report,
            "erased": erased,
            "entity": entity,
            "example_user": example_user,
            "requests": requests,
            "verification": verification,
            "shredded": shredded,
            "seconds": time.monotonic() - started,
        }
        return summary, seeded
    finally:
        await engine.dispose()


async def check_console(client: httpx.AsyncClient, token: str) -> None:
    """Sign in as a browser would; the overview must name the token."""
    # A client of its own: the session cookie must not ride along on the API calls above.
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=10) as browser:
        signed_in = await browser.post("/ui/sign-in", data={"token": token, "next": "/ui/"})
        overview = await browser.get("/ui/")
    if signed_in.status_code != 303 or overview.status_code != 200:
        raise DemoFailed(
            f"console sign-in answered {signed_in.status_code}, overview {overview.status_code}"
        )
    if "demo-reader" not in overview.text:
        raise DemoFailed("the console's overview does not name the signed-in token")


async def erasure_requests(
    demo: Demo, client: httpx.AsyncClient, seeded: Seeded
) -> list[dict[str, Any]]:
    """File one request that completes and one that a subject hold stops; their rows."""
    held_user = seeded.users_due[0]  # seed.py puts the first due users under dispute-42
    active = seeded.users_unheld[0]  # only an erasure request removes it
    step(
        f"filing erasure requests: user:{active} (GDPR) and user:{held_user} (CCPA, "
        "under a subject hold)"
    )

    async def wait(what: str, check: Callable[[], Awaitable[bool]]) -> None:
        await wait_until(what, check, timeout_s=demo.timeout_s, demo=demo)

    try:
        return await file_demo_requests(
            client, demo.auth("demo-writer"), active=active, held=held_user, wait=wait
        )
    except RequestsFailed as exc:
        raise DemoFailed(str(exc)) from exc


async def verify_entity(demo: Demo, client: httpx.AsyncClient, user: str) -> dict[str, Any]:
    """Ask every service that acked the user's deletion how much it still holds (SPEC §12);
    each example service counts its rows of the user, so the answer must be `verified`."""
    step(f"verifying user:{user}: POST /v1/entities/user/{user}/verify")
    asked = await client.post(f"/v1/entities/user/{user}/verify", headers=demo.auth("demo-writer"))
    if asked.status_code != 201:
        raise DemoFailed(f"POST .../verify answered {asked.status_code}: {asked.text}")
    event_id = asked.json()["event_id"]
    found: dict[str, Any] = {}

    async def answered() -> bool:
        nonlocal found
        listed = (await client.get(f"/v1/entities/user/{user}/verifications")).json()
        found = next(v for v in listed if v["event_id"] == event_id)
        return all(a["status"] != "pending" for a in found["services"])

    await wait_until("every service's verify answer", answered, timeout_s=60, demo=demo)
    if found["outcome"] != "verified":
        answers = {a["service"]: a["status"] for a in found["services"]}
        raise DemoFailed(f"user:{user} was not verified: {answers}")
    return found


async def shredded_archive(
    demo: Demo, client: httpx.AsyncClient, request: dict[str, Any], seeded: Seeded
) -> dict[str, Any]:
    """The completed request crypto-shredded its user's login_history archive: the key is
    gone and the admin read route answers 410, while another user's archive still opens."""
    user = request["subject"].partition(":")[2]
    other = seeded.users_unheld[1]
    step(f"archive read (admin): user:{user}'s logins, then user:{other}'s")
    part = next(p for p in request["policies"] if p["policy"] == "login_history")
    admin = demo.auth("demo-admin")
    route = "/v1/policies/login_history/archive/user/{}"
    gone = await client.get(route.format(user), headers=admin)
    kept = await client.get(route.format(other), headers=admin)
    if not part["archived_copies_shredded"] or gone.status_code != 410 or kept.status_code != 200:
        raise DemoFailed(
            f"login_history: {part['archived_copies_shredded']} copies shredded, archive read "
            f"answered {gone.status_code} (shredded user) and {kept.status_code} (other user)"
        )
    return {
        "user": user,
        "other": other,
        "rows": part["archived_copies_shredded"],
        "key_id": part["shredded_key_id"],
        "gone": gone.status_code,
        "kept_rows": len(kept.json()),
    }


async def erasure_counts(url: str) -> dict[str, int]:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return {
                e.name: int(
                    await conn.scalar(select(func.coalesce(func.sum(e.erasure_log.c.rows), 0))) or 0
                )
                for e in EXAMPLES
            }
    finally:
        await engine.dispose()


# --- the summary -----------------------------------------------------------------------


def print_summary(demo: Demo, summary: dict[str, Any], seeded: Seeded) -> None:
    run, body = summary["run"], summary["metrics"]
    before = {label(k, "policy"): v for k, v in summary["before"].items()}
    after = {
        label(k, "policy"): v for k, v in samples(body, "retention_oldest_unprocessed_days").items()
    }
    retention = {
        label(k, "policy"): v for k, v in samples(body, "retention_policy_retention_days").items()
    }
    events = {row["policy"]: row for row in summary["report"]["policies"]}
    out.print()
    table = Table(title=f"Run {run['id']} (trigger {run['trigger']}, status {run['status']})")
    for column in (
        "policy",
        "action",
        "retention",
        "processed",
        "held",
        "events",
        "completed",
        "oldest due before",
        "after",
    ):
        table.add_column(column, justify="left" if column in ("policy", "action") else "right")
    for result in run["policies"]:
        name = result["policy"]
        table.add_row(
            name,
            result["action"],
            f"{retention.get(name, 0):.0f} d",
            str(result["processed"]),
            str(result["held"]),
            str(result["events"]),
            str(events.get(name, {}).get("completed", 0)),
            f"{before.get(name, 0):.1f} d",
            f"{after.get(name, 0):.1f} d",
        )
    out.print(table)

    acks = samples(body, "retention_acks_total")
    services = Table(title="Per service: acknowledgements and local erasures")
    for column in (
        "service",
        "events",
        "completed",
        "failed",
        "pending",
        "acks completed",
        "acks not_found",
        "rows erased",
        "median s",
        "p95 s",
    ):
        services.add_column(column, justify="left" if column == "service" else "right")
    for row in summary["report"]["services"]:
        name = row["service"]
        by_status = {label(k, "status"): v for k, v in acks.items() if label(k, "service") == name}
        services.add_row(
            name,
            str(row["events"]),
            str(row["completed"]),
            str(row["failed"]),
            str(row["pending"]),
            f"{by_status.get('completed', 0):.0f}",
            f"{by_status.get('not_found', 0):.0f}",
            str(summary["erased"].get(name, 0)),
            f"{row['median_seconds']}",
            f"{row['p95_seconds']}",
        )
    out.print(services)

    entity = summary["entity"]
    if entity:
        answers = ", ".join(f"{s['service']}={s['status']}" for s in entity[0]["services"])
        out.print(
            f"user:{summary['example_user']}: {entity[0]['state']} ({answers}) — "
            f"GET {demo.api}/v1/entities/user/{summary['example_user']}"
        )
    verification = summary["verification"]
    answers = ", ".join(
        f"{a['service']}={a['status']} ({a['records_affected']} left)"
        for a in verification["services"]
    )
    out.print(
        f"user:{summary['example_user']} verified after its deletion: "
        f"{verification['outcome']} ({answers}) — "
        f"GET {demo.api}/v1/entities/user/{summary['example_user']}/verifications"
    )
    requests = Table(title="Erasure requests")
    for column in ("id", "subject", "regulation", "status", "due", "rows", "exempt", "held by"):
        requests.add_column(column)
    for row in summary["requests"]:
        acted = sum(p["rows"] for p in row["policies"] if p["outcome"] == "done")
        exempt = sum(p["rows"] for p in row["policies"] if p["outcome"] == "exempt")
        holds = "; ".join(
            f"{hold} ({reason})"
            for hold, reason in zip(row["holds"], row["hold_reasons"], strict=True)
        )
        requests.add_row(
            row["id"][:8],
            row["subject"],
            row["regulation"],
            row["status"],
            row["due_at"][:10],
            str(acted),
            str(exempt),
            holds or "-",
        )
    out.print(requests)
    shredded = summary["shredded"]
    out.print(
        f"[green]✓[/green] crypto-shredded: user:{shredded['user']}'s {shredded['rows']} "
        f"archived login_history rows (data key {shredded['key_id']} destroyed): its archive "
        f"read answers {shredded['gone']}; user:{shredded['other']}'s still opens "
        f"({shredded['kept_rows']} row, admin token)"
    )
    # A labelled gauge with no sample yet (no pending acks at scrape time) is still exported:
    # its HELP line is there.
    missing = [m for m in SPEC_METRICS if f"# HELP {m} " not in body]
    if missing:
        raise DemoFailed(f"/metrics lacks SPEC §8 metrics: {missing}")
    policies_in_metrics = {
        label(k, "policy") for k in samples(body, "retention_records_processed_total")
    }
    if policies_in_metrics != {r["policy"] for r in run["policies"]}:
        raise DemoFailed(f"/metrics has processed counts for {sorted(policies_in_metrics)} only")
    out.print(
        f"[green]✓[/green] /metrics exports all {len(SPEC_METRICS)} SPEC §8 metrics, "
        f"for policies {', '.join(sorted(policies_in_metrics))}"
    )
    out.print(
        f"[green]✓[/green] every event completed; {seeded.held_entities} entities under legal "
        f"hold were left alone; demo took {summary['seconds']:.0f}s"
    )
    out.print()
    out.print(
        f"console      {demo.api}/ui/  (sign in with the read or write token below; "
        "`python -m demo --keep` leaves it open)"
    )
    out.print(f"API          {demo.api}/docs (OpenAPI at {demo.api}/openapi.json)")
    out.print(f"metrics      {demo.api}/metrics")
    out.print(f"health       {demo.api}/healthz")
    out.print(f"runs         {demo.api}/v1/runs   holds {demo.api}/v1/holds")
    out.print(f"requests     {demo.api}/v1/erasure-requests")
    out.print(f"tokens       {demo.tokens_file} (hashes); send one as Authorization: Bearer …")
    for name, scope in DEMO_TOKENS:
        out.print(f"  {scope.value:<6} {name:<12} {demo.tokens[name]}", highlight=False)
    out.print(f"logs         {WORK}/*.log")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8080")))
    parser.add_argument("--scale", type=int, default=100, help="rows per category and table")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per waiting step")
    parser.add_argument(
        "--name",
        default="retention_demo",
        help="database name (recreated; the services use NAME_services)",
    )
    args = parser.parse_args()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,50}", args.name):
        parser.error(f"--name {args.name!r}: lower-case letters, digits and _ only")
    configure_logging("WARNING")
    demo = Demo(Settings(), args.port, args.scale, args.timeout, args.name)
    if not port_free(demo.port):
        out.print(
            f"[red]demo failed:[/red] port {demo.port} is in use (a demo left running with "
            "--keep? stop it, or pass --port / DEMO_PORT)"
        )
        return 1
    code = 0
    try:
        summary, seeded = asyncio.run(run_demo(demo))
        print_summary(demo, summary, seeded)
    except DemoFailed as exc:
        out.print(f"[red]demo failed:[/red] {exc}")
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # an unexpected failure still stops what was started
        out.print(f"[red]demo failed:[/red] {type(exc).__name__}: {exc}")
        code = 1
    if args.keep and code == 0:
        pids = " ".join(str(p.proc.pid) for p in demo.processes)
        out.print(f"\n--keep: still running (pids {pids}); stop with: kill {pids}")
        return 0
    step("stopping what the demo started")
    codes = stop_processes(demo)
    bad = {name: c for name, c in codes.items() if c != 0}
    if bad and code == 0:
        out.print(f"[red]demo failed:[/red] unclean exit codes {bad}")
        code = 1
    try:
        asyncio.run(delete_topics(demo.kafka))
    except Exception as exc:  # the demo's result stands; the topics are only clutter
        out.print(f"[yellow]could not delete the demo topics:[/yellow] {exc!r}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
