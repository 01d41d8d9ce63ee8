"""Writes the JSON Schema of each wire model into `schemas/json/` (`python -m schemas.export`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.models import (
    HoldRecord,
    RetentionAck,
    RetentionEvent,
    ServiceRegistration,
    WireModel,
)

__all__ = ["JSON_DIR", "main", "render"]

JSON_DIR = Path(__file__).parent / "json"
MODELS: tuple[type[WireModel], ...] = (
    RetentionEvent,
    RetentionAck,
    ServiceRegistration,
    HoldRecord,
)


def render() -> dict[str, str]:
    """File name → JSON text for every wire model, as committed."""
    return {
        f"{model.__name__}.json": json.dumps(
            model.model_json_schema(mode="serialization"), indent=2, sort_keys=True
        )
        + "\n"
        for model in MODELS
    }


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (JSON_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {JSON_DIR / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
