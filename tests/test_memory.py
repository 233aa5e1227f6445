"""The live-tensor probe of `dsod bench`'s training section (engine/train_probe.py)."""
import sys

import pytest
import torch

from dsod.engine.train_probe import live_peak_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallinfo2 is Linux-only")
def test_live_peak_grows_with_the_temporary_tensors():
    live_peak_bytes(lambda: torch.ones(4).sum())  # first use: one-off lazy initialisations
    small = live_peak_bytes(lambda: torch.ones(4 << 20).sum())  # a 16 MiB temporary
    large = live_peak_bytes(lambda: torch.ones(16 << 20).sum())  # a 64 MiB temporary
    assert abs(small - (16 << 20)) < 4 << 20 and abs(large - (64 << 20)) < 4 << 20
