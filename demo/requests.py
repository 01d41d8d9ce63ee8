"""The demo's two erasure requests, filed over the HTTP API (SPEC §11).

One for an active user, which completes once every service acknowledged it; one for a
user under the subject hold `dispute-42`, which stays `on_hold` naming the hold.
`make demo` (demo/run.py) files them with its writer token; docker-compose.yml runs
`python -m demo requests` once `serve` is healthy, with the writer token `tokens` left
for it (demo/tokens.py). Imports nothing test-only: the image runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "HOLD_ID",
    "RequestsFailed",
    "active_user",
    "file_demo_requests",
    "held_user",
    "main",
]

HOLD_ID = "dispute-42"
"""The subject hold demo/seed.py puts on the first due users."""

Wait = Callable[[str, Callable[[], Awaitable[bool]]], Awaitable[None]]
"""`wait(what, check)`: until `check()` is true, or raise naming `what`."""


def active_user(scale: int) -> str:
    """An active user (never closed, so only an erasure request removes it) who owns no row
    under the litigation hold, so that the request completes.

    seed.py's user n is active when n % 6 is 4 or 5. demo/seed_data.py gives the seed
    tables' rows to user-00000 … user-00096 (`n % 97`), and from a scale of about 40 each of
    those owns a held row: past that, a user beyond them.
    """
    for n in range(97, 3 * scale):
        if n % 6 in (4, 5):
            return f"user-{n:05d}"
    return "user-00004"


class RequestsFailed(RuntimeError):
    """A request was refused or did not reach its expected status; the message says which."""


async def held_user(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """A user under the demo's subject hold, read from the hold itself."""
    response = await client.get(f"/v1/holds/{HOLD_ID}", headers=headers)
    if response.status_code != 200:
        raise RequestsFailed(f"GET /v1/holds/{HOLD_ID} answered {response.status_code}")
    entities: list[str] = response.json().get("entities", [])
    users = sorted(e for e in entities if e.startswith("user:"))
    if not users:
        raise RequestsFailed(f"hold {HOLD_ID} covers no user")
    return users[0].partition(":")[2]


async def file_demo_requests(
    client: httpx.AsyncClient, headers: dict[str, str], *, active: str, held: str, wait: Wait
) -> list[dict[str, Any]]:
    """File both requests; wait until the first completes; return both rows, each with
    its holds' reasons. The second must be `on_hold`, naming its hold."""
    filed = []
    for subject, regulation in ((active, "gdpr"), (held, "ccpa")):
        response = await client.post(
            "/v1/erasure-requests",
            json={"subject": f"user:{subject}", "regulation": regulation, "reference": subject},
            headers=headers,
        )
        # 200: filed before under this reference (a later `up` of the same stack).
        if response.status_code not in (200, 201):
            raise RequestsFailed(
                f"POST /v1/erasure-requests answered {response.status_code}: {response.text}"
            )
        filed.append(response.json()["id"])
    completes, stays = filed

    async def completed() -> bool:
        found = (await client.get(f"/v1/erasure-requests/{completes}", headers=headers)).json()
        return bool(found["status"] == "completed")

    await wait("the erasure request to complete", completed)
    rows = [
        (await client.get(f"/v1/erasure-requests/{i}", headers=headers)).json()
        for i in (completes, stays)
    ]
    if rows[1]["status"] != "on_hold" or not rows[1]["holds"]:
        raise RequestsFailed(f"the held user's request is {rows[1]['status']}, not on_hold")
    for row in rows:
        row["hold_reasons"] = [
            (await client.get(f"/v1/holds/{hold}", headers=headers)).json()["reason"]
            for hold in row["holds"]
        ]
    return rows


def _polling(timeout_s: float) -> Wait:
    async def wait(what: str, check: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if await check():
                    return
            except (httpx.TransportError, OSError):
                pass  # serve restarting: ask again
            await asyncio.sleep(1.0)
        raise RequestsFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")

    return wait


async def _run(api: str, token: str, scale: int, timeout_s: float) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api, timeout=30.0) as client:
        held = await held_user(client, headers)
        return await file_demo_requests(
            client, headers, active=active_user(scale), held=held, wait=_polling(timeout_s)
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo requests",
        description="File the demo's two erasure requests over the HTTP API and print them: "
        "one completes, one stays on_hold naming its subject hold.",
    )
    parser.add_argument("--api", required=True, help="base URL of `retention serve`")
    parser.add_argument(
        "--token-file", type=Path, required=True, help="a file holding a `write` API token"
    )
    parser.add_argument(
        "--scale", type=int, default=100, help="the scale `python -m demo seed` seeded with"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    args = parser.parse_args(argv)
    token = args.token_file.read_text(encoding="utf-8").strip()
    try:
        rows = asyncio.run(_run(args.api, token, args.scale, args.timeout))
    except RequestsFailed as exc:
        print(f"demo requests failed: {exc}", file=sys.stderr)
        return 1
    for row in rows:
        shown = {
            k: row.get(k)
            for k in ("id", "subject", "regulation", "status", "due_at", "completed_at", "holds")
        }
        print(json.dumps({**shown, "hold_reasons": row["hold_reasons"]}, sort_keys=True))
    return 0
