"""Search index service (a Faust app): removes a user's documents (`user` / delete)."""

from services.search_index.service import (
    SERVICE,
    create_app,
    documents,
    erasure_log,
    metadata,
    seed,
)

__all__ = ["SERVICE", "create_app", "documents", "erasure_log", "metadata", "seed"]
