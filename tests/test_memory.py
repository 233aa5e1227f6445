"""CPU allocator tuning used by `dsod train` and the live-tensor probe of `dsod bench`."""
import sys

import pytest
import torch

from dsod.bench import _live_peak_bytes
from dsod.engine.memory import tune_cpu_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tune_cpu_allocator_applies_and_respects_the_users_setting(monkeypatch):
    assert tune_cpu_allocator() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tune_cpu_allocator() is False  # the user's own setting wins


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallinfo2 is Linux-only")
def test_live_peak_grows_with_the_temporary_tensors():
    _live_peak_bytes(lambda: torch.ones(4).sum())  # first use: one-off lazy initialisations
    small = _live_peak_bytes(lambda: torch.ones(4 << 20).sum())  # a 16 MiB temporary
    large = _live_peak_bytes(lambda: torch.ones(16 << 20).sum())  # a 64 MiB temporary
    assert abs(small - (16 << 20)) < 4 << 20 and abs(large - (64 << 20)) < 4 << 20
