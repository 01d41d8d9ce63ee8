"""Declared vs registered services (SPEC §9): registrations are signals, never authority.

A service drifts when what it last registered differs from what the policy file declares
for it, when it registers without being declared, or when it is declared but has no
current registration (never started, or its registration was tombstoned).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.policy.model import DeclaredService
from coordinator.store.tables import service_registry

__all__ = ["Drift", "service_drift"]

Pairs = frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Drift:
    service: str
    declared: Pairs | None
    """(entity type, action) pairs the policy file declares; None: not declared."""
    registered: Pairs
    """Pairs its current registration lists (empty: none, or tombstoned)."""
    last_seen: datetime | None
    sdk_version: str | None

    @property
    def problem(self) -> str | None:
        if self.declared is None:
            return "undeclared"
        if not self.registered:
            return "not_registered"
        if self.declared != self.registered:
            return "handles_differ"
        return None

    @property
    def drifting(self) -> bool:
        return self.problem is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "declared": None if self.declared is None else _listed(self.declared),
            "registered": _listed(self.registered),
            "drift": self.problem,
            "last_seen": self.last_seen,
            "sdk_version": self.sdk_version,
        }


def _listed(pairs: Pairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for entity_type, action in sorted(pairs):
        out[entity_type].append(action)
    return dict(out)


async def service_drift(
    conn: AsyncConnection, declared: Sequence[DeclaredService]
) -> dict[str, Drift]:
    """Every declared or registered service, by name (the registry holds one row per
    service, entity type and action: a few hundred rows at most)."""
    registered: dict[str, set[tuple[str, str]]] = defaultdict(set)
    seen: dict[str, tuple[datetime, str]] = {}
    for row in await conn.execute(select(service_registry)):
        if row.retired_at is None:
            registered[row.service].add((row.entity_type, row.action))
        if row.service not in seen or row.last_seen > seen[row.service][0]:
            seen[row.service] = (row.last_seen, row.sdk_version)
    by_name = {svc.name: svc.pairs() for svc in declared}
    out = {}
    for name in sorted(by_name.keys() | seen.keys()):
        last = seen.get(name)
        out[name] = Drift(
            service=name,
            declared=by_name.get(name),
            registered=frozenset(registered.get(name, ())),
            last_seen=last[0] if last else None,
            sdk_version=last[1] if last else None,
        )
    return out
