"""Holds stored before ids were normalised, brought into the form a purge matches.

A purge matches a hold by `(entity_type, id_column::text)`, and since holds are created
through `EntityTypes.resolve` their ids are stored in that text form (`order:042` is
stored as `42`). Holds created before that stored the id as typed, so `order:042`
protected nothing. `normalise_hold_ids` rewrites them:

* an id with a normal form is replaced by it (by every form, if the type's tables differ
  in id type), in the hold it belongs to;
* an id whose normal form the same hold already holds (`042` beside `42`) is a duplicate:
  its row goes, and the report names it;
* an entity type no policy has, or an id no table of its type can hold, is left as it is
  and reported: it protects nothing, and only a person can say what was meant.

Every hold not released is covered (an expired one too: it may be extended by a new hold
quoting it). It needs the policies (which column types hold which entity type), which an
alembic revision does not have, so it runs from `retention holds normalise` and after
`retention db upgrade` when a policy file is configured. Running it again changes nothing
(idempotent). It takes the hold creation lock, like creating a hold, and writes one
audit entry with every change, in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.purge.holds import EntityTypes, lock_for_creation
from coordinator.store.tables import legal_hold_entities, legal_holds

__all__ = ["HoldIdChange", "HoldIdReport", "normalise_hold_ids"]


@dataclass(frozen=True, slots=True, order=True)
class HoldIdChange:
    """One stored hold entity and what it becomes (empty: it is left as it is)."""

    hold_id: str
    entity_type: str
    stored: str
    normalised: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "entity": f"{self.entity_type}:{self.stored}",
            "normalised": [f"{self.entity_type}:{i}" for i in self.normalised],
        }


@dataclass(slots=True)
class HoldIdReport:
    rewritten: list[HoldIdChange] = field(default_factory=list)
    """Stored ids replaced by their normal forms."""
    duplicates: list[HoldIdChange] = field(default_factory=list)
    """Stored ids removed: the hold already held every normal form of them."""
    unknown_types: list[HoldIdChange] = field(default_factory=list)
    """Kept as stored: no policy has the entity type."""
    unparsable: list[HoldIdChange] = field(default_factory=list)
    """Kept as stored: no table of the type can hold the id."""

    @property
    def ok(self) -> bool:
        """Every stored hold entity now names rows a purge can match."""
        return not self.unknown_types and not self.unparsable

    @property
    def changed(self) -> bool:
        return bool(self.rewritten or self.duplicates)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rewritten": [c.as_dict() for c in self.rewritten],
            "duplicates": [c.as_dict() for c in self.duplicates],
            "unknown_types": [c.as_dict() for c in self.unknown_types],
            "unparsable": [c.as_dict() for c in self.unparsable],
        }


async def normalise_hold_ids(
    conn: AsyncConnection,
    types: EntityTypes,
    *,
    actor: str,
    now: datetime,
    dry_run: bool = False,
) -> HoldIdReport:
    """Rewrite the ids of every hold not released into their normal forms (module doc).

    With `dry_run`, report what would change and write nothing.
    """
    await lock_for_creation(conn)
    e = legal_hold_entities.c
    rows = (
        await conn.execute(
            select(e.hold_id, e.entity_type, e.entity_id)
            .join(legal_holds, legal_holds.c.id == e.hold_id)
            .where(legal_holds.c.released_at.is_(None))
            .order_by(e.hold_id, e.entity_type, e.entity_id)
        )
    ).all()
    held = {(r.hold_id, r.entity_type, r.entity_id) for r in rows}
    report = HoldIdReport()
    for hold_id, entity_type, stored in rows:
        forms = types.forms.get(entity_type)
        if forms is None:
            report.unknown_types.append(HoldIdChange(hold_id, entity_type, stored))
            continue
        normalised = tuple(sorted({n for f in forms if (n := f.normalise(stored)) is not None}))
        if not normalised:
            report.unparsable.append(HoldIdChange(hold_id, entity_type, stored))
            continue
        change = HoldIdChange(hold_id, entity_type, stored, normalised)
        missing = [n for n in normalised if (hold_id, entity_type, n) not in held]
        if stored not in normalised:
            (report.rewritten if missing else report.duplicates).append(change)
        elif missing:
            # The type's tables differ in id type: the hold needs every form, as at creation.
            report.rewritten.append(change)
    if dry_run or not report.changed:
        return report
    gone = [
        (c.hold_id, c.entity_type, c.stored)
        for c in report.rewritten + report.duplicates
        if c.stored not in c.normalised
    ]
    if gone:
        await conn.execute(
            delete(legal_hold_entities).where(
                tuple_(e.hold_id, e.entity_type, e.entity_id).in_(gone)
            )
        )
    added = sorted(
        {(c.hold_id, c.entity_type, n) for c in report.rewritten for n in c.normalised} - held
    )
    if added:
        await conn.execute(
            postgresql.insert(legal_hold_entities).on_conflict_do_nothing(),
            [{"hold_id": h, "entity_type": t, "entity_id": i} for h, t, i in added],
        )
    await append(
        conn,
        [
            AuditEntry(
                AuditAction.HOLDS_NORMALISED,
                actor,
                {
                    "rewritten": [c.as_dict() for c in report.rewritten],
                    "duplicates": [c.as_dict() for c in report.duplicates],
                },
            )
        ],
        at=now,
    )
    return report
