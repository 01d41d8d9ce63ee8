"""Entity: one entity's certificate and timeline, and the certificate as a download."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coordinator.api._context import Connection, Context
from coordinator.console._render import ReadPage
from coordinator.purge.holds import HoldError
from coordinator.tracking.entity import entity_certificate

__all__ = ["router"]

router = APIRouter(prefix="/ui/entities")

EntityType = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)]
EntityId = Annotated[str, Path(min_length=1, max_length=500)]


@router.get("", response_class=HTMLResponse)
async def lookup(
    page: ReadPage,
    entity_type: Annotated[str, Query(alias="type", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)],
    entity_id: Annotated[str, Query(alias="id", min_length=1, max_length=500)],
) -> Response:
    """The overview's look-up form lands here."""
    target = page.request.url_for(
        "console_entity", entity_type=entity_type, entity_id=entity_id.strip()
    )
    return RedirectResponse(target.path, status.HTTP_303_SEE_OTHER)


def _timeline(certificate: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step the certificate records, in time order."""
    steps: list[dict[str, Any]] = [
        {
            "at": purge["purged_at"],
            "what": f"{purge['action']} by {purge['policy']}: purged locally"
            + ("" if purge["fanned_out"] else " (no downstream event)"),
            "audit": purge["audit"],
        }
        for purge in certificate["local_purges"]
    ]
    for event in certificate["events"]:
        name = f"{event['action']} by {event['policy']}"
        for key, what in (
            ("purged_at", f"{name}: purged locally"),
            ("published_at", f"{name}: published to services"),
            ("completed_at", f"{name}: every service confirmed"),
        ):
            if event[key]:
                steps.append({"at": event[key], "what": what, "audit": None})
        for ack in event["acknowledgements"]:
            steps.append(
                {
                    "at": ack["acknowledged_at"],
                    "what": f"{ack['service']} answered {ack['status']} "
                    f"({ack['records_affected']} records, attempt {ack['attempt']})",
                    "audit": ack["audit"],
                }
            )
    for verification in certificate["verifications"]:
        asked = ", ".join(a["service"] for a in verification["services"])
        steps.append(
            {
                "at": verification["requested_at"],
                "what": f"verify ({verification['trigger']}) asked {asked}",
                "audit": None,
            }
        )
        for answer in verification["services"]:
            if answer["acknowledged_at"]:
                steps.append(
                    {
                        "at": answer["acknowledged_at"],
                        "what": f"{answer['service']} answered verify: {answer['status']} "
                        f"({answer['records_affected']} records left)",
                        "audit": None,
                    }
                )
    return sorted(steps, key=lambda s: s["at"] or "")


async def _certificate(
    ctx: Context, conn: Connection, entity_type: str, entity_id: str
) -> dict[str, Any]:
    try:
        # The id normalised as a hold's is: `order/042` shows order 42.
        found = await entity_certificate(
            conn,
            ctx.policy_set,
            entity_type,
            entity_id,
            now=ctx.clock.now(),
            pepper=ctx.pepper,
            backups=ctx.backups,
        )
    except HoldError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no retention event or purge for {entity_type}:{entity_id}"
        )
    return found


@router.get("/{entity_type}/{entity_id}", response_class=HTMLResponse, name="console_entity")
async def entity(
    page: ReadPage, ctx: Context, conn: Connection, entity_type: EntityType, entity_id: EntityId
) -> Response:
    certificate = await _certificate(ctx, conn, entity_type, entity_id)
    return page.render(
        "entity.html",
        title=f"Entity {entity_type}:{entity_id}",
        nav="entity",
        certificate=certificate,
        timeline=_timeline(certificate),
        entity_type=entity_type,
        entity_id=entity_id,
    )


@router.get("/{entity_type}/{entity_id}/certificate.json", name="console_certificate")
async def certificate_download(
    page: ReadPage, ctx: Context, conn: Connection, entity_type: EntityType, entity_id: EntityId
) -> Response:
    certificate = await _certificate(ctx, conn, entity_type, entity_id)
    # The file name carries only characters that need no quoting in the header.
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{entity_type}-{entity_id}")
    return Response(
        json.dumps(certificate, indent=2, sort_keys=True) + "\n",
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="certificate-{safe[:120]}.json"'},
    )
