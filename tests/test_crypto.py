"""Envelope encryption: sealing, associated data, KEK wrapping, the KEK file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from coordinator.copies.crypto.envelope import (
    KEY_BYTES,
    NONCE_BYTES,
    BatchSealer,
    SealError,
    new_key,
    new_keys,
    open_sealed,
    seal,
)
from coordinator.copies.crypto.provider import LocalKeyProvider, UnwrapError, write_kek


def test_sealed_value_opens_only_with_its_key_and_place() -> None:
    key = new_key()
    sealed = seal(key, b"alice@example.org", b"t:1")
    assert b"alice" not in sealed
    assert open_sealed(key, sealed, b"t:1") == b"alice@example.org"
    with pytest.raises(SealError):
        open_sealed(key, sealed, b"t:2")  # copied onto another row
    with pytest.raises(SealError):
        open_sealed(new_key(), sealed, b"t:1")
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError):
        open_sealed(key, altered, b"t:1")


def test_kek_file_wraps_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "kek.hex"
    kek_id = write_kek(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_kek(path)
    provider = LocalKeyProvider.from_file(path)
    assert provider.kek_id == kek_id
    data_key = new_key()
    wrapped = provider.wrap(data_key)
    assert data_key not in wrapped
    assert provider.unwrap(wrapped, kek_id) == data_key
    other = LocalKeyProvider(new_key())
    with pytest.raises(UnwrapError):
        other.unwrap(wrapped, kek_id)
    with pytest.raises(UnwrapError):
        other.unwrap(wrapped, other.kek_id)


def test_batch_sealer_seals_as_seal_does_with_fresh_nonces() -> None:
    keys = new_keys(2)
    assert len(set(keys)) == 2
    assert all(len(k) == KEY_BYTES for k in keys)
    sealer = BatchSealer(3)
    sealed = [
        sealer.seal(keys[0], b"alice", b"t:1"),
        sealer.seal(keys[1], b"bob", b"t:2"),
        sealer.seal(keys[0], b"alice", b"t:1"),
    ]
    assert open_sealed(keys[0], sealed[0], b"t:1") == b"alice"
    assert open_sealed(keys[1], sealed[1], b"t:2") == b"bob"
    assert open_sealed(keys[0], sealed[2], b"t:1") == b"alice"
    with pytest.raises(SealError):
        open_sealed(keys[1], sealed[0], b"t:1")  # under the other key of the batch
    # Every value has its own nonce, so equal plaintexts under one key differ.
    assert len({s[:NONCE_BYTES] for s in sealed}) == 3
    assert sealed[0] != sealed[2]
    with pytest.raises(ValueError, match="more values than its count"):
        sealer.seal(keys[0], b"carol", b"t:3")
