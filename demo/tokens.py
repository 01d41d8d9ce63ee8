"""The demo's API tokens, made as `retention tokens create NAME --scope S --file F` makes them.

`make demo` calls `create_demo_tokens` for its `retention serve`; docker-compose.yml runs
`python -m demo tokens FILE` once into a volume that `serve` reads. Either way the tokens
are printed once, when they are made; the file holds only their hashes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.tokens import Scope, add_token, load_tokens_file, new_token

__all__ = ["DEMO_TOKENS", "create_demo_tokens", "main"]

DEMO_TOKENS = (
    ("demo-reader", Scope.READ),
    ("demo-writer", Scope.WRITE),
    ("demo-admin", Scope.ADMIN),
)
"""One token per scope; the name is what the audit log records for its writes."""


def create_demo_tokens(path: Path) -> dict[str, str]:
    """Add the demo's tokens to the tokens file at `path`; returns name → token."""
    made = {}
    for name, scope in DEMO_TOKENS:
        created = new_token(name, scope)
        add_token(path, created.entry)
        made[name] = created.token
    return made


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo tokens",
        description="Create the demo's API tokens (one per scope) in a new tokens file and "
        "print them; a file that exists already is left alone.",
    )
    parser.add_argument("file", type=Path, help="the RETENTION_API_TOKENS_FILE to create")
    path: Path = parser.parse_args(argv).file
    if path.exists():
        names = ", ".join(t.name for t in load_tokens_file(path).tokens)
        print(f"{path} exists ({names}): kept; its tokens were printed when it was made")
        return 0
    for name, token in create_demo_tokens(path).items():
        print(f"{name:<12} {token}")
    print(f"hashes written to {path}")
    return 0
