"""The suppression list's key (SPEC §12) and pepper file: what both sides compute."""

from __future__ import annotations

import hashlib
import hmac
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.cli import app
from schemas.suppression import PepperError, read_pepper, suppression_key


def test_the_key_is_hmac_sha256_of_type_colon_id_in_hex() -> None:
    pepper = b"p" * 32
    expected = hmac.new(pepper, b"user:42", hashlib.sha256).hexdigest()
    assert suppression_key(pepper, "user", "42") == expected
    assert suppression_key(pepper, "user", "42") != suppression_key(pepper, "order", "42")
    assert suppression_key(b"q" * 32, "user", "42") != expected


def test_generate_writes_a_private_pepper_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["keys", "generate", "--pepper", "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    path = tmp_path / "suppression.pepper"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_pepper(path)
    assert len(key) == 64
    assert bytes.fromhex(key.decode())  # 32 random bytes, as hex
    again = runner.invoke(app, ["keys", "generate", "--pepper", "--out", str(tmp_path)])
    assert again.exit_code == 2
    assert read_pepper(path) == key
    both = runner.invoke(app, ["keys", "generate", "--pepper", "--kek", "--out", str(tmp_path)])
    assert both.exit_code == 2


def test_a_short_or_missing_pepper_is_refused_without_quoting_it(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("secret-but-short\n")
    with pytest.raises(PepperError) as info:
        read_pepper(short)
    assert "secret-but-short" not in str(info.value)
    with pytest.raises(PepperError, match="FileNotFoundError"):
        read_pepper(tmp_path / "missing")
