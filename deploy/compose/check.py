"""`make compose-check`: the whole compose stack started, used and checked, then removed.

On the host-network variant of docker-compose.yml (deploy/compose/host_network.py) with our
local images: Kafka, PostgreSQL, migrate, seed, tokens, serve, the four services and Prometheus come
up in docker-compose.yml's order; the check waits on their healthchecks, triggers a run
through the API, waits until every event is acked by every service and until `requests`
filed the demo's two erasure requests through the API (one completed, one on_hold), asks
Prometheus' HTTP API for our metrics and the loaded alert rules, and brings everything
down, whatever happened. Any step that does not hold fails the check with what was seen.

    python -m deploy.compose.check   (from the repository's root)
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import yaml
from sqlalchemy import func, select

from coordinator.outbox.lookup import EVENTS
from coordinator.store.db import make_engine
from coordinator.store.tables import event_status
from deploy.compose.host_network import LEFT_OUT, ROOT, generate
from services import EXAMPLES

PROJECT = "retention-fanout-check"
OUT = ROOT / ".cache" / "compose"
HEALTHY = ("kafka", "postgres", "serve")
ONE_SHOT = ("migrate", "seed", "tokens")
REQUESTS = "requests"
"""The one-shot filing the demo's erasure requests; it runs until the first completes."""
WRITER = "demo-writer"
"""The write-scope token `tokens` makes (demo/tokens.py) and prints once, as users read it."""
LONG_RUNNING = (*(e.name for e in EXAMPLES), "prometheus")
PROFILE = "observability"
TIMEOUT_S = 240.0
STARTED = time.monotonic()


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"[compose-check {time.monotonic() - STARTED:5.1f}s] {message}", flush=True)


def compose_command() -> list[str]:
    """The v2 plugin where present, else Debian's docker-compose (v1)."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CheckFailed("neither `docker compose` nor `docker-compose` is installed")


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [*compose_command(), "-p", PROJECT, "-f", str(OUT / "compose.yml"), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise CheckFailed(f"{' '.join(argv[-len(args) :])} failed:\n{done.stderr[-3000:]}")
    return done


def states() -> dict[str, dict[str, Any]]:
    """`docker inspect` of the project's containers, by compose service name."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return {}
    found = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True)
    by_service: dict[str, dict[str, Any]] = {}
    for container in json.loads(found.stdout):
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        if service in by_service:
            raise CheckFailed(f"{service}: more than one container")
        by_service[service] = container
    return by_service


async def wait_until(what: str, probe: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(1)
    say(f"{what}: yes")


def check_containers() -> None:
    """Healthy where a healthcheck exists, one-shots exited 0, the rest running, no restarts."""
    found = states()
    missing = {*HEALTHY, *ONE_SHOT, *LONG_RUNNING} - set(found)
    if missing:
        raise CheckFailed(f"no container for {sorted(missing)}")
    for service in HEALTHY:
        health = found[service]["State"].get("Health", {}).get("Status")
        if health != "healthy":
            raise CheckFailed(f"{service} is {health!r}, not healthy")
    for service in ONE_SHOT:
        state = found[service]["State"]
        if state["Status"] != "exited" or state["ExitCode"] != 0:
            raise CheckFailed(f"{service}: {state['Status']}, exit code {state['ExitCode']}")
    for service in (*HEALTHY, *LONG_RUNNING):
        state, restarts = found[service]["State"], found[service]["RestartCount"]
        if state["Status"] != "running" or restarts:
            raise CheckFailed(f"{service}: {state['Status']}, restarted {restarts} times")
    for service, container in found.items():
        if container["HostConfig"]["NetworkMode"] != "host":
            raise CheckFailed(f"{service} is not on the host network")


def networks() -> list[str]:
    listed = subprocess.run(
        ["docker", "network", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(listed.stdout.split())


RUN_ATTEMPTS = 3


async def _run(client: httpx.AsyncClient) -> dict[str, Any]:
    """Trigger a run through the API and wait for it to finish; its status document."""
    accepted = await client.post("/v1/runs")
    if accepted.status_code != 202:
        raise CheckFailed(f"POST /v1/runs: {accepted.status_code} {accepted.text}")
    status_url = accepted.json()["status_url"]
    say(f"run triggered through the API: {status_url}")
    run: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal run
        answer = await client.get(status_url)
        if answer.status_code != 200:
            raise CheckFailed(f"GET {status_url}: {answer.status_code} {answer.text}")
        run = answer.json()
        return run.get("finished_at") is not None

    await wait_until("the run finished", finished, TIMEOUT_S)
    return run


def _only_busy(run: dict[str, Any]) -> bool:
    """Whether every policy that failed was only skipped as run by another process."""
    failed = [p for p in run.get("policies", []) if p.get("status") != "ok"]
    return bool(failed) and all(
        p.get("errors") and all("being run by another process" in e for e in p["errors"])
        for p in failed
    )


async def run_and_wait_for_acks(api: str, token: str, database_url: str) -> int:
    engine = make_engine(database_url, pool_size=1)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=api, timeout=10, headers=headers) as client:
            for attempt in range(1, RUN_ATTEMPTS + 1):
                run = await _run(client)
                if run["status"] == "ok":
                    break
                # A policy another process is running (the stack's own scheduled run or
                # erasure requests) is skipped, by design: trigger again once it is done.
                if attempt == RUN_ATTEMPTS or not _only_busy(run):
                    raise CheckFailed(f"the run finished with status {run['status']}: {run}")
                say("a policy was being run by another process; triggering the run again")
        events = 0

        async def all_acked() -> bool:
            nonlocal events
            async with engine.connect() as conn:
                events = int(await conn.scalar(select(func.count()).select_from(EVENTS)) or 0)
                completed = await conn.scalar(
                    select(func.count())
                    .select_from(event_status)
                    .where(event_status.c.state == "completed")
                )
            return events > 0 and completed == events

        await wait_until("every event acked by every service", all_acked, TIMEOUT_S)
        return events
    finally:
        await engine.dispose()


async def check_prometheus(url: str, alert_rules: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def query(expr: str) -> list[dict[str, Any]]:
            body = (await client.get("/api/v1/query", params={"query": expr})).json()
            if body["status"] != "success":
                raise CheckFailed(f"Prometheus query {expr}: {body}")
            result: list[dict[str, Any]] = body["data"]["result"]
            return result

        async def targets_up() -> bool:
            return len(await query("up == 1")) == 5

        await wait_until("Prometheus scrapes serve and the four services (up == 1)", targets_up, 60)

        async def metrics_scraped() -> bool:
            processed = await query("retention_records_processed_total")
            consumed = await query('{__name__=~"retention_consumer_.+", job="retention-services"}')
            return bool(processed) and bool(consumed)

        await wait_until(
            "our metrics in Prometheus (retention_records_processed_total, retention_consumer_*)",
            metrics_scraped,
            60,
        )
        body = (await client.get("/api/v1/rules", params={"type": "alert"})).json()
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        unhealthy = [r["name"] for r in rules if r.get("health") not in ("ok", "unknown")]
        if len(rules) != alert_rules or unhealthy:
            raise CheckFailed(
                f"Prometheus loaded {len(rules)} alert rules (expected {alert_rules}); "
                f"unhealthy: {unhealthy}"
            )
        say(f"Prometheus loaded all {alert_rules} alert rules of deploy/prometheus/alerts.yml")


def alert_rule_count() -> int:
    document = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return sum(1 for g in document["groups"] for r in g["rules"] if "alert" in r)


async def check() -> None:
    ports = generate(OUT)
    variant = yaml.safe_load((OUT / "compose.yml").read_text())
    say(f"host-network variant written to {OUT / 'compose.yml'} (left out: {', '.join(LEFT_OUT)})")
    serve_env = variant["services"]["serve"]["environment"]
    api = f"http://127.0.0.1:{serve_env['RETENTION_HTTP_PORT']}"
    database_url = serve_env["RETENTION_DATABASE_URL"]
    prometheus = f"http://127.0.0.1:{ports['prometheus']['9090']}"

    services = "migrate, seed, tokens, serve, four services, Prometheus"
    say(f"{' '.join(compose_command())} up -d ({services})")
    compose("--profile", PROFILE, "up", "-d")
    # v1 returns once every depends_on condition held (healthy, exited 0); v2 with --wait
    # would too. The healthchecks are checked here all the same.
    await wait_until(
        "kafka, postgres and serve healthy",
        lambda: asyncio.to_thread(_all_healthy),
        TIMEOUT_S,
    )
    check_containers()
    say(f"containers: {', '.join(sorted(variant['services']))}; networks: {networks()}")
    if networks() != ["host", "none"]:
        raise CheckFailed(f"networks other than host and none exist: {networks()}")

    events = await run_and_wait_for_acks(api, writer_token(), database_url)
    say(f"{events} events, each acked by every service that registered for it")
    await check_requests()
    await check_prometheus(prometheus, alert_rule_count())
    check_containers()


async def check_requests() -> None:
    """`requests` exited 0 having printed two rows: one completed, one on_hold with a hold."""

    def exited() -> bool:
        return bool(states().get(REQUESTS, {}).get("State", {}).get("Status") == "exited")

    await wait_until(
        "the demo's erasure requests filed through the API",
        lambda: asyncio.to_thread(exited),
        TIMEOUT_S,
    )
    code = states()[REQUESTS]["State"]["ExitCode"]
    logs = compose("logs", "--no-color", REQUESTS).stdout
    if code != 0:
        raise CheckFailed(f"{REQUESTS} exited {code}: {logs[-2000:]}")
    # Each row is one JSON line, after compose's `requests_1  | ` prefix.
    rows = [json.loads(line[line.index("{") :]) for line in logs.splitlines() if "{" in line]
    found = sorted((r["status"], bool(r["holds"])) for r in rows)
    if found != [("completed", False), ("on_hold", True)]:
        raise CheckFailed(f"{REQUESTS} printed {rows}, not one completed and one on_hold")
    say(f"erasure requests through the API: {', '.join(r['status'] for r in rows)}")


def writer_token() -> str:
    """The write token from `tokens`' log (`docker compose logs tokens`); never printed."""
    logs = compose("logs", "--no-color", "tokens").stdout
    found = re.search(rf"\b{WRITER}\s+(\S+)\s*$", logs, re.MULTILINE)
    if found is None:
        raise CheckFailed(f"`tokens` printed no {WRITER} token")
    return found[1]


def _all_healthy() -> bool:
    found = states()
    return all(
        found.get(s, {}).get("State", {}).get("Health", {}).get("Status") == "healthy"
        for s in HEALTHY
    )


def main() -> int:
    failure: str | None = None
    try:
        asyncio.run(check())
    except (CheckFailed, subprocess.CalledProcessError, httpx.HTTPError) as exc:
        failure = str(exc)
        logs = compose("--profile", PROFILE, "logs", "--no-color", "--tail", "25", check=False)
        print(logs.stdout[-15000:], file=sys.stderr)
    finally:
        say("down: removing the stack")
        compose("--profile", PROFILE, "down", "--volumes", "--remove-orphans", check=False)
        left = compose("ps", "-q", check=False).stdout.split()
        if left:
            failure = failure or f"containers left after down: {left}"
    if failure:
        say(f"FAILED: {failure}")
        return 1
    say("OK: the compose stack came up, erased every due row everywhere, and went down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
