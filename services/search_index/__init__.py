"""Search index service (a Faust app): removes a user's documents (`user` / delete)."""

from services.search_index.service import (
    EXAMPLE,
    SERVICE,
    create_app,
    documents,
    erasure_log,
    metadata,
    seed,
)

__all__ = ["EXAMPLE", "SERVICE", "create_app", "documents", "erasure_log", "metadata", "seed"]
