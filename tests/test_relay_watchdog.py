"""The watchdog's judgement, on a clock the test moves."""

from __future__ import annotations

from coordinator.outbox.relay import Watchdog


def test_stalls_only_after_the_window_without_progress() -> None:
    now = [100.0]
    watchdog = Watchdog(5.0, monotonic=lambda: now[0])
    now[0] += 5.0
    assert not watchdog.stalled()
    now[0] += 0.1
    assert watchdog.stalled()
    watchdog.progress()
    assert not watchdog.stalled()
    now[0] += 4.9
    assert not watchdog.stalled()
