"""The relay's allocator thresholds (coordinator/heap.py) reach glibc's `mallopt`."""

from __future__ import annotations

import platform

import pytest
from pydantic import ValidationError

from coordinator.heap import keep_freed_memory
from coordinator.settings import RelaySettings


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_relays_thresholds() -> None:
    defaults = RelaySettings()
    assert keep_freed_memory(defaults.malloc_mmap_threshold, defaults.malloc_trim_threshold)


def test_settings_refuse_a_threshold_past_glibcs_documented_maximum() -> None:
    with pytest.raises(ValidationError):
        RelaySettings(malloc_mmap_threshold=64 * 1024 * 1024)
