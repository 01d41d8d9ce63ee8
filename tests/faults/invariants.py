"""The one invariant check every fault scenario ends with (issue 8).

1. holds:     no row under an active hold touched (coordinator rows, service data, events);
2. young:     no row inside retention (or NULL-timestamped, or out of scope) touched;
3. delivered: every expired entity was processed, has exactly one event, published,
              tracked, and acknowledged by every service expected for its type;
4. once:      each service applied each event's effect exactly once (its `erasure_log`
              rows), and nothing it was not acknowledged for;
5. settled:   every event is `completed`, or `failed`/`overdue` with a stated reason
              (only where the scenario allows it);
6. audit:     the hash-chained audit log verifies.

`check_invariants` returns an `InvariantReport` listing every violation, so one failing
run shows all of them; `report.line()` is the printable summary (scenario, seed, faults
injected, events checked, each invariant) and every report is kept in `REPORTS` for the
totals line at the end of the session (tests/faults/conftest.py). `settle` waits until
the world has reached its end state, so a check does not race the system.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import exists, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.erasure.execute import SUBJECT_EVENT_POLICY
from coordinator.evidence import audit
from coordinator.outbox.lookup import EVENTS
from coordinator.store.db import make_engine
from coordinator.store.tables import ack_ledger, anonymized, event_status, expected_acks
from services import EXAMPLES
from tests.e2e.harness import Stack
from tests.faults.world import (
    ENTITY_SERVICES,
    USERS_POLICY,
    World,
    row_checksums,
    user_tables,
)

__all__ = [
    "INVARIANTS",
    "REPORTS",
    "InvariantReport",
    "check_invariants",
    "settle",
    "totals_line",
]

INVARIANTS = ("holds", "young", "delivered", "once", "signed", "settled", "audit")

REPORTS: list[InvariantReport] = []
"""Every report of this session, for the totals line."""

SERVICE_LOGS = {e.name: (e.erasure_log, e.erased_id) for e in EXAMPLES if not e.faust}


@dataclass
class InvariantReport:
    scenario: str
    seed: int
    faults: Counter[str]
    events: int = 0
    problems: dict[str, list[str]] = field(
        default_factory=lambda: {name: [] for name in INVARIANTS}
    )

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    @property
    def losses(self) -> int:
        """Events or effects that should exist and do not (invariant 3)."""
        return len(self.problems["delivered"])

    @property
    def forged_effects(self) -> int:
        """Service effects of events the coordinator never published (signed)."""
        return sum("effect of unknown event" in p for p in self.problems["once"])

    @property
    def forged_completions(self) -> int:
        """Acknowledgements counted without a verified ack from the service's key."""
        return len(self.problems["signed"])

    def line(self) -> str:
        faults = ",".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        checks = " ".join(
            f"{name}={'pass' if not self.problems[name] else 'FAIL'}" for name in INVARIANTS
        )
        return (
            f"[faults] scenario={self.scenario} seed={self.seed} faults[{faults}] "
            f"events={self.events} {checks}"
        )

    def details(self, limit: int = 20) -> str:
        lines = [self.line()]
        for name, problems in self.problems.items():
            lines.extend(f"  {name}: {p}" for p in problems[:limit])
            if len(problems) > limit:
                lines.append(f"  {name}: ... {len(problems) - limit} more")
        return "\n".join(lines)

    def assert_ok(self) -> None:
        assert self.ok, self.details()


def totals_line(reports: list[InvariantReport]) -> str:
    faults: Counter[str] = Counter()
    for report in reports:
        faults.update(report.faults)
    kills = sum(v for k, v in faults.items() if k.startswith("kill"))
    return (
        f"[faults] TOTALS scenarios={len(reports)} "
        f"passed={sum(r.ok for r in reports)} kills_survived={kills} "
        f"faults_injected={sum(faults.values())} "
        f"events_checked={sum(r.events for r in reports)} "
        f"losses={sum(r.losses for r in reports)} "
        f"forged_effects={sum(r.forged_effects for r in reports)} "
        f"forged_completions={sum(r.forged_completions for r in reports)}"
    )


async def settle(stack: Stack, world: World, *, timeout_s: float, alive: object = None) -> None:
    """Until every expected event is published and tracked and none is still pending or
    held."""
    deadline = time.monotonic() + timeout_s
    engine = stack.engine()
    try:
        while True:
            async with engine.connect() as conn:
                published = await conn.scalar(
                    select(func.count())
                    .select_from(EVENTS)
                    .where(EVENTS.c.published_at.is_not(None))
                )
                states = dict(
                    (
                        await conn.execute(
                            select(event_status.c.state, func.count()).group_by(
                                event_status.c.state
                            )
                        )
                    ).all()
                )
            tracked = sum(states.values())
            if (
                published == world.expected_events
                and tracked == world.expected_events
                and not states.get("pending")
                # A held event is re-published once its hold is released: not settled yet.
                and not states.get("held")
            ):
                return
            if callable(alive):
                alive()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not settled after {timeout_s}s: {published}/{world.expected_events} "
                    f"published, tracked {states}"
                )
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


async def check_invariants(
    stack: Stack,
    world: World,
    *,
    scenario: str,
    seed: int,
    faults: Mapping[str, int],
    allow_unfinished: bool = False,
    record: bool = True,
    entity_services: Mapping[str, frozenset[str]] = ENTITY_SERVICES,
) -> InvariantReport:
    """Check the six invariants on the stack's databases; the report lists every violation.

    `entity_services` says which services each entity type's events must reach, for a
    scenario that runs a test-only service besides the three example ones.
    """
    report = InvariantReport(scenario, seed, Counter(faults))
    coordinator = stack.engine()
    services = make_engine(stack.services_url)
    try:
        async with coordinator.connect() as conn, services.connect() as svc:
            events = await _events(conn)
            report.events = len(events)
            effects = await _effects(svc)
            await _check_rows(conn, world, report)
            await _check_services_untouched(svc, world, report)
            _check_events(world, events, report)
            acks = await _acks(conn)
            _check_delivery(events, acks, report, entity_services)
            _check_effects(events, acks, effects, report)
            await _check_signed(conn, report)
            await _check_settled(conn, allow_unfinished, report)
            checked, broken = await audit.verify(conn)
            if broken is not None or checked == 0:
                report.problems["audit"].append(f"chain broken after {checked} rows: {broken}")
    finally:
        await coordinator.dispose()
        await services.dispose()
    if record:
        REPORTS.append(report)
    print(report.line())
    return report


# --- the coordinator's rows ------------------------------------------------------------


async def _check_rows(conn: AsyncConnection, world: World, report: InvariantReport) -> None:
    for name, facts in world.policies.items():
        before = world.untouched_checksums[name]
        now = await row_checksums(conn, world, name, set(before))
        for entity_id, digest in before.items():
            if now.get(entity_id) != digest:
                which = "holds" if entity_id in world.held(name) else "young"
                report.problems[which].append(f"{name}: row {entity_id} changed or gone")
        processed = world.processed(name)
        left = await row_checksums(conn, world, name, processed)
        if facts.action in ("delete", "archive"):
            for entity_id in sorted(left):
                report.problems["delivered"].append(f"{name}: expired row {entity_id} still there")
        if facts.action == "archive":
            archived = await conn.execute(
                text(f'SELECT id::text FROM "{facts.table}_archive"')  # our own table name
            )
            missing = processed - set(archived.scalars())
            report.problems["delivered"].extend(
                f"{name}: row {i} not in the archive" for i in sorted(missing)
            )
        if facts.action == "anonymize":
            ledger = set(
                (
                    await conn.execute(
                        select(anonymized.c.entity_id).where(anonymized.c.policy == name)
                    )
                ).scalars()
            )
            report.problems["delivered"].extend(
                f"{name}: row {i} not anonymized" for i in sorted(processed - ledger)
            )
            report.problems["holds"].extend(
                f"{name}: held row {i} in the anonymized ledger"
                for i in sorted(ledger & world.held(name))
            )
            report.problems["young"].extend(
                f"{name}: young row {i} in the anonymized ledger"
                for i in sorted(ledger & world.young(name))
            )


# --- the services' data ----------------------------------------------------------------


async def _check_services_untouched(
    svc: AsyncConnection, world: World, report: InvariantReport
) -> None:
    """Held and young users keep every row the services seeded for them (an anonymized
    row loses its `user_id`), and no service logged an effect for a held or young entity."""
    for which, users in (
        ("holds", world.held(USERS_POLICY)),
        ("young", world.young(USERS_POLICY)),
    ):
        for table in user_tables():
            kept = Counter(
                dict(
                    (
                        await svc.execute(
                            select(table.c.user_id, func.count())
                            .where(table.c.user_id.in_(users))
                            .group_by(table.c.user_id)
                        )
                    ).all()
                )
            )
            report.problems[which].extend(
                f"{table.name} of {u}: {kept[u]} of {world.service_rows[(table.name, u)]} left"
                for u in sorted(users)
                if kept[u] != world.service_rows[(table.name, u)]
            )
    for which in ("holds", "young"):
        for policy in world.policies.values():
            if not policy.fan_out:
                continue
            ids = world.held(policy.name) if which == "holds" else world.young(policy.name)
            for service in sorted(ENTITY_SERVICES.get(policy.entity_type, frozenset())):
                log, entity = SERVICE_LOGS[service]
                query = select(entity).distinct().where(entity.in_(sorted(ids)))
                if "entity_type" in log.c:
                    query = query.where(log.c.entity_type == policy.entity_type)
                touched = (await svc.execute(query)).scalars()
                report.problems[which].extend(
                    f"{service} applied an effect to {policy.entity_type} {i}"
                    for i in sorted(map(str, touched))
                )


# --- events, acks, effects ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    event_id: object
    policy: str
    entity_type: str
    entity_id: str
    published: bool


async def _events(conn: AsyncConnection) -> list[_Event]:
    rows = await conn.execute(
        select(
            EVENTS.c.event_id,
            EVENTS.c.policy,
            EVENTS.c.entity_type,
            EVENTS.c.entity_id,
            EVENTS.c.published_at.is_not(None),
        )
    )
    return [_Event(*row) for row in rows]


async def _acks(conn: AsyncConnection) -> dict[object, dict[str, str]]:
    """Per tracked event: service → its expected-ack status (absent: not tracked)."""
    rows = await conn.execute(
        select(event_status.c.event_id, expected_acks.c.service, expected_acks.c.status).join_from(
            event_status,
            expected_acks,
            expected_acks.c.event_id == event_status.c.event_id,
            isouter=True,
        )
    )
    acks: dict[object, dict[str, str]] = defaultdict(dict)
    for event_id, service, status in rows:
        acks[event_id]  # a tracked event with no expected service still counts as tracked
        if service is not None:
            acks[event_id][service] = status
    return dict(acks)


async def _effects(svc: AsyncConnection) -> dict[str, Counter[tuple[object, str]]]:
    """Per service, (event_id, entity_id) → how many erasure_log rows."""
    effects: dict[str, Counter[tuple[object, str]]] = {}
    for service, (table, entity) in SERVICE_LOGS.items():
        rows = await svc.execute(
            select(table.c.event_id, entity, func.count()).group_by(table.c.event_id, entity)
        )
        effects[service] = Counter({(row[0], row[1]): row[2] for row in rows})
    return effects


def _check_events(world: World, events: list[_Event], report: InvariantReport) -> None:
    per_entity = Counter((e.policy, e.entity_id) for e in events)
    for name, facts in world.policies.items():
        expected = world.processed(name) if facts.fan_out else set()
        published = {entity for (policy, entity) in per_entity if policy == name}
        for entity in sorted(expected - published):
            report.problems["delivered"].append(f"{name}: no event for expired {entity}")
        for entity in sorted(published & world.held(name)):
            report.problems["holds"].append(f"{name}: event for held {entity}")
        for entity in sorted(published & world.young(name)):
            report.problems["young"].append(f"{name}: event for young {entity}")
        for entity in sorted(published - expected - world.held(name) - world.young(name)):
            report.problems["delivered"].append(f"{name}: event for unknown entity {entity}")
    report.problems["delivered"].extend(
        f"{policy}: {n} events for {entity}"
        for (policy, entity), n in sorted(per_entity.items())
        if n != 1 + (world.refiled[entity] if policy == SUBJECT_EVENT_POLICY else 0)
    )
    report.problems["delivered"].extend(
        f"event {e.event_id} ({e.policy}) never published" for e in events if not e.published
    )


def _check_delivery(
    events: list[_Event],
    acks: dict[object, dict[str, str]],
    report: InvariantReport,
    entity_services: Mapping[str, frozenset[str]],
) -> None:
    for event in events:
        if event.event_id not in acks:
            report.problems["delivered"].append(f"event {event.event_id} not tracked")
            continue
        want = entity_services.get(event.entity_type, frozenset())
        got = acks[event.event_id]
        if set(got) != want:
            report.problems["delivered"].append(
                f"event {event.event_id}: expected services {sorted(got)}, want {sorted(want)}"
            )
        report.problems["delivered"].extend(
            f"event {event.event_id}: no ack from {service}"
            for service, status in sorted(got.items())
            if status == "pending"
        )


def _check_effects(
    events: list[_Event],
    acks: dict[object, dict[str, str]],
    effects: Mapping[str, Counter[tuple[object, str]]],
    report: InvariantReport,
) -> None:
    by_id = {e.event_id: e for e in events}
    for service, counted in effects.items():
        for (event_id, entity), rows in sorted(counted.items(), key=str):
            if rows != 1:
                report.problems["once"].append(f"{service}: event {event_id} applied {rows} times")
            event = by_id.get(event_id)
            if event is None or event.entity_id != entity:
                report.problems["once"].append(f"{service}: effect of unknown event {event_id}")
            elif acks.get(event_id, {}).get(service) != "completed":
                report.problems["once"].append(
                    f"{service}: event {event_id} applied without a completed ack"
                )
    for event_id, services in acks.items():
        event = by_id.get(event_id)
        for service, status in services.items():
            # Only services whose effects this check can count (a scenario's own
            # test service counts its effects itself).
            if (
                status == "completed"
                and event is not None
                and service in effects
                and effects[service][(event_id, event.entity_id)] == 0
            ):
                report.problems["once"].append(
                    f"{service}: completed ack for {event_id} but no effect"
                )


async def _check_signed(conn: AsyncConnection, report: InvariantReport) -> None:
    """Every service counted done has an accepted ack of that status in the ledger; with
    signatures required, the tracker accepts only acks verified against the service's
    declared key (a forged ack is recorded rejected)."""
    e, a = expected_acks.c, ack_ledger.c
    rows = await conn.execute(
        select(e.event_id, e.service, e.status).where(
            e.status.in_(("completed", "not_found")),
            ~exists().where(
                a.event_id == e.event_id,
                a.service == e.service,
                a.status == e.status,
                a.accepted,
            ),
        )
    )
    report.problems["signed"].extend(
        f"event {row.event_id}: {row.service} {row.status} without an accepted ack" for row in rows
    )


async def _check_settled(
    conn: AsyncConnection, allow_unfinished: bool, report: InvariantReport
) -> None:
    rows = await conn.execute(
        select(
            event_status.c.event_id,
            event_status.c.state,
            event_status.c.overdue_at,
            func.array_agg(expected_acks.c.detail).filter(expected_acks.c.status == "failed"),
        )
        .join_from(
            event_status,
            expected_acks,
            expected_acks.c.event_id == event_status.c.event_id,
            isouter=True,
        )
        .group_by(event_status.c.event_id)
    )
    for event_id, state, overdue_at, failures in rows:
        if state == "completed":
            continue
        stated = (state == "failed" and any(failures or [])) or (
            state == "overdue" and overdue_at is not None
        )
        if not allow_unfinished or not stated:
            report.problems["settled"].append(f"event {event_id} ended {state}")
    # No foreign key says it since migration 0028: every expected ack is of a tracked event.
    orphans = await conn.execute(
        select(expected_acks.c.event_id, expected_acks.c.service).where(
            ~exists().where(event_status.c.event_id == expected_acks.c.event_id)
        )
    )
    report.problems["settled"].extend(
        f"expected ack of {service} for untracked event {event_id}" for event_id, service in orphans
    )
