"""`GET /v1/policies/{name}/archive/{entity_type}/{entity_id}`: `retention archive read`
over HTTP (SPEC §12). Admin only: the answer is the personal data itself."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, status

from coordinator.api._context import Context
from coordinator.api.auth import Admin
from coordinator.copies.crypto.keystore import KeyStoreError
from coordinator.purge.archive import ArchiveTampered, CryptoShredded
from coordinator.purge.archive_read import ArchiveNotFound, read_entity

__all__ = ["router"]

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1", tags=["archive"])


@router.get(
    "/policies/{name}/archive/{entity_type}/{entity_id}",
    responses={
        404: {"description": "no such archive policy, or it cannot hold this entity"},
        410: {"description": "the rows are crypto-shredded: their data key was destroyed"},
        409: {"description": "an archived row does not open under its key (altered or moved)"},
        503: {"description": "the key store is not configured (RETENTION_KEK_FILE)"},
    },
)
async def read_archive(
    ctx: Context, actor: Admin, name: str, entity_type: str, entity_id: str
) -> list[dict[str, Any]]:
    """The entity's archived rows under policy `name`, decrypted (the policy's own entity
    type, or its subject's: all their rows). Needs `admin`; every read is logged with the
    token's name, never with the data."""
    if ctx.settings is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no key store configured")
    try:
        rows = await read_entity(
            ctx.engine, ctx.settings, ctx.policy_set, name, entity_type, entity_id
        )
    except ArchiveNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except CryptoShredded as exc:
        raise HTTPException(status.HTTP_410_GONE, str(exc)) from None
    except ArchiveTampered as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except KeyStoreError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    log.info("archive_read", actor=actor.name, policy=name, rows=len(rows))
    return rows
