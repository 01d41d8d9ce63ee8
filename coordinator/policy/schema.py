"""Writes the policy file's JSON Schema for editors (`python -m coordinator.policy.schema`).

Point an editor at `coordinator/policy/policy.schema.json` (e.g. a `# yaml-language-server:
$schema=…` comment) to get completion and validation of policy files while typing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from coordinator.policy.model import PolicyFile

__all__ = ["SCHEMA_FILE", "main", "render"]

SCHEMA_FILE = Path(__file__).parent / "policy.schema.json"


def render() -> str:
    schema = PolicyFile.model_json_schema(mode="validation")
    schema["title"] = "retention-fanout policy file"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
