"""Operating the fan-out after something went wrong downstream: re-publish, DLQ, backfill."""
