"""Signing keys for tests: derived from a name, so tests and policy files agree on them.

TEST KEYS ONLY. Anyone can derive them from this file; nothing real may trust them.
`write_key_files` puts them where the coordinator and the SDK read keys from files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.policy.model import DeclaredService
from schemas.signing import Signer, format_public_key

__all__ = [
    "COORDINATOR",
    "SERVICE",
    "declared",
    "private_key",
    "public_key",
    "signer",
    "write_key_files",
]

COORDINATOR = "coordinator"
SERVICE = "service"
"""The key every test service signs with unless a test gives it its own."""


def private_key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"retention-fanout test key " + name.encode()).digest()
    )


def signer(name: str = SERVICE) -> Signer:
    return Signer(private_key(name))


def public_key(name: str = SERVICE) -> str:
    return format_public_key(private_key(name).public_key())


def declared(
    name: str, handles: Mapping[str, Iterable[str]], *, key: str = SERVICE
) -> DeclaredService:
    return DeclaredService.model_validate(
        {
            "name": name,
            "owner": "tests",
            "handles": {e: list(a) for e, a in handles.items()},
            "public_keys": [public_key(key)],
        }
    )


def write_key_files(folder: Path, *names: str) -> dict[str, Path]:
    """NAME.key (PEM PKCS#8, 0600) and NAME.pub per name; returns the .key paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        key = private_key(name)
        path = folder / f"{name}.key"
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Whole files only: parallel test processes write the same keys.
        _replace(path, pem, 0o600)
        _replace(folder / f"{name}.pub", (public_key(name) + "\n").encode(), 0o644)
        paths[name] = path
    return paths


def _replace(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
