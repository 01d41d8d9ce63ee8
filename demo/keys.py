"""The demo's signing keys: made on first start under .cache/demo/keys, reused after.

demo/policies.yaml declares each service with `public_key_files` pointing there, so the
demo runs with signatures `required` end to end. The compose stack's `seed` step fills the
same folder (a volume) before anything else starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from schemas.signing import generate_key_files
from services import NAMES

__all__ = ["COORDINATOR", "KEYS", "SERVICES", "ensure_keys", "signing_env"]

KEYS = Path(__file__).resolve().parent.parent / ".cache" / "demo" / "keys"
COORDINATOR = "coordinator"
SERVICES = NAMES
"""One key pair each: every example service signs its acks."""


def ensure_keys(folder: Path = KEYS) -> Path:
    """Generate whichever key pair is missing; return the folder."""
    for name in (COORDINATOR, *SERVICES):
        if not (folder / f"{name}.key").exists():
            generate_key_files(folder, name)
    return folder


def signing_env(name: str, folder: Path = KEYS) -> dict[str, str]:
    """The signing variables of the coordinator (`name` = coordinator) or of one service."""
    if name == COORDINATOR:
        return {"RETENTION_SIGNING_KEY_FILE": str(folder / f"{COORDINATOR}.key")}
    public = (folder / f"{COORDINATOR}.pub").read_text(encoding="ascii").strip()
    return {
        "RETENTION_SERVICE_SIGNING_KEY_FILE": str(folder / f"{name}.key"),
        "RETENTION_COORDINATOR_PUBLIC_KEYS": public,
    }


if __name__ == "__main__":
    ensure_keys(Path(sys.argv[1]) if len(sys.argv) > 1 else KEYS)
