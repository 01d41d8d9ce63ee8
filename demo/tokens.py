"""The demo's API tokens, made as `retention tokens create NAME --scope S --file F` makes them.

`make demo` calls `create_demo_tokens` for its `retention serve`; docker-compose.yml runs
`python -m demo tokens FILE --writer-token-file W` once into a volume that `serve` reads.
Either way the tokens are printed once, when they are made; the file holds only their
hashes. Compose's `requests` one-shot files the demo's erasure requests with the writer
token from `W`, in a volume only it and `tokens` mount.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from coordinator.api.tokens import Scope, add_token, load_tokens_file, new_token
from coordinator.cli.keys import KEK_FILE
from coordinator.copies.crypto.provider import write_kek

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


def _write_secret(path: Path, text: str) -> None:
    """Created 0600 from the start: never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo tokens",
        description="Create the demo's API tokens (one per scope) in a new tokens file and "
        "print them, and the archive's KEK beside it; files that exist are left alone.",
    )
    parser.add_argument("file", type=Path, help="the RETENTION_API_TOKENS_FILE to create")
    parser.add_argument(
        "--writer-token-file",
        type=Path,
        help="also write the demo-writer token here (0600), for `python -m demo requests`",
    )
    args = parser.parse_args(argv)
    path: Path = args.file
    # The archive's key-encryption key lives beside the tokens, made once like them.
    kek = path.with_name(KEK_FILE)
    if not kek.exists():
        print(f"archive key-encryption key written to {kek} ({write_kek(kek)})")
    if path.exists():
        names = ", ".join(t.name for t in load_tokens_file(path).tokens)
        print(f"{path} exists ({names}): kept; its tokens were printed when it was made")
        return 0
    made = create_demo_tokens(path)
    for name, token in made.items():
        print(f"{name:<12} {token}")
    print(f"hashes written to {path}")
    if args.writer_token_file is not None:
        _write_secret(args.writer_token_file, made["demo-writer"])
        print(f"demo-writer token written to {args.writer_token_file}")
    return 0
