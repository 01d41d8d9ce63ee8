"""The relay's allocator thresholds and trims (coordinator/heap.py) reach glibc, 0 turns
both off, and a trim gives back what the thresholds keep. Whatever changes the allocator
runs in a subprocess: the thresholds are process-wide, and pytest's own must stay glibc's."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from coordinator import heap
from coordinator.outbox import relay as relay_module
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

MIB = 1024 * 1024

# A block's size word (glibc's chunk header, the word before the pointer) has bit 1 set
# where the block was mapped on its own rather than taken from the heap.
PROBE = """
import ctypes
from types import SimpleNamespace

from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def mapped(size):
    block = libc.malloc(size)
    own = bool(ctypes.c_size_t.from_address(block - 8).value & 2)
    libc.free(block)
    return own


def apply(**change):
    return OutboxRelay._keep_freed_memory(SimpleNamespace(_settings=RelaySettings(**change)))


def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))
"""


def run(script: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", PROBE + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@glibc_only
def test_the_relays_thresholds_reach_glibc_and_0_leaves_them_alone() -> None:
    out = run(
        """
        # A threshold under glibc's (raised as imports freed large blocks), then the defaults.
        print(apply(malloc_mmap_threshold=256 * 1024), mapped(512 * 1024))
        print(apply(malloc_mmap_threshold=0), mapped(512 * 1024))
        print(apply(), mapped(512 * 1024), mapped(7 * 1024 * 1024), mapped(9 * 1024 * 1024))
        """
    )
    assert out.split("\n") == ["True True", "False True", "True False False True", ""]


def test_the_relay_applies_its_settings_and_0_turns_them_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []

    def keep(mmap_threshold: int, trim_threshold: int) -> bool:
        calls.append((mmap_threshold, trim_threshold))
        return True

    monkeypatch.setattr(relay_module, "keep_freed_memory", keep)

    class Fake:
        _settings = RelaySettings(malloc_mmap_threshold=5 * MIB, malloc_trim_threshold=6 * MIB)

    assert OutboxRelay._keep_freed_memory(Fake())  # type: ignore[arg-type]
    Fake._settings = RelaySettings(malloc_mmap_threshold=0)
    assert not OutboxRelay._keep_freed_memory(Fake())  # type: ignore[arg-type]
    assert calls == [(5 * MIB, 6 * MIB)]


@glibc_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_trim_gives_back_the_heap_the_thresholds_keep() -> None:
    out = run(
        """
        from coordinator.heap import return_freed_memory

        apply()
        base = rss_mib()
        big, live = [], []
        for _ in range(30):
            block = bytearray(4 * 1024 * 1024)
            block[::4096] = b"\\x01" * (len(block) // 4096)  # touched: resident
            big.append(block)
            live.append(bytearray(64 * 1024))  # above it in the heap, still alive
        big.clear()
        kept = rss_mib() - base
        return_freed_memory()
        print(kept, rss_mib() - base)
        """
    )
    kept, after = map(int, out.split())
    # 120 MiB freed below live blocks: kept whatever the trim threshold (32 MiB), then
    # given back but for the ~2 MiB still alive.
    assert kept >= 100
    assert after <= 16


def test_idle_trim_waits_for_a_whole_idle_wait_after_work(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[None] = []
    monkeypatch.setattr(heap, "return_freed_memory", lambda: trims.append(None) or True)
    trim = heap.IdleTrim(enabled=True)
    assert not trim.idle(0)  # idle from the start: nothing was kept
    assert not trim.idle(0)
    assert not trim.idle(10)  # idle right after work: the next round may follow at once
    assert not trim.idle(25)
    assert trim.idle(25)  # a whole wait with nothing done
    assert not trim.idle(25)
    assert not trim.end(25)
    assert not trim.idle(30)
    assert trim.end(30)  # the loop stops after work
    assert len(trims) == 2
    off = heap.IdleTrim(enabled=False)
    assert not off.idle(5)
    assert not off.idle(5)
    assert not off.end(6)
    assert len(trims) == 2


def test_settings_refuse_a_threshold_past_glibcs_documented_maximum() -> None:
    with pytest.raises(ValidationError):
        RelaySettings(malloc_mmap_threshold=64 * 1024 * 1024)
