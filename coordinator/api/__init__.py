"""The HTTP API of `retention serve`: health, metrics, policies, runs, completion, holds."""

from coordinator.api._context import ApiContext, RunInProgress, RunTrigger
from coordinator.api.app import create_app

__all__ = ["ApiContext", "RunInProgress", "RunTrigger", "create_app"]
