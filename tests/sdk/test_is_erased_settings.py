"""`is_erased` refuses to guess: without a usable pepper it raises before touching Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer_sdk import ConfigurationError, ConsumerSettings, RetentionConsumer


async def test_without_a_pepper_is_erased_names_the_setting() -> None:
    app = RetentionConsumer("svc", settings=ConsumerSettings(database_url=None))
    with pytest.raises(ConfigurationError, match="RETENTION_SUPPRESSION_PEPPER_FILE"):
        await app.is_erased("user", "42")


async def test_a_short_pepper_is_refused_without_quoting_it(tmp_path: Path) -> None:
    pepper = tmp_path / "pepper"
    pepper.write_text("too-short-secret\n")
    app = RetentionConsumer(
        "svc", settings=ConsumerSettings(database_url=None, suppression_pepper_file=pepper)
    )
    with pytest.raises(ConfigurationError) as info:
        await app.is_erased("user", "42")
    assert "too-short-secret" not in str(info.value)
    await app.stop()  # nothing was opened: a no-op
