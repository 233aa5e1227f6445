import os
from pathlib import Path

import pytest
import torch
from helpers import shared_data_root

# Keep the suite predictable on the 2-core CI machine: the cores shared out between pytest-xdist's
# workers (`make test` runs one per core), two threads at most.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_root()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared datasets not found at {SHARED_DATA} (set DSOD_SHARED_DATA)")
    return SHARED_DATA


def pytest_configure(config):
    # tests/test_cuda.py: run on a GPU machine with `pytest -m cuda` (benchmarks/gpu_check.py does);
    # they skip where CUDA is not available, so the suite itself never needs a GPU
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    # the slow end-to-end runs, each proving what no unit test can (real training, real processes);
    # `make test` runs them with the rest, `pytest -m e2e` alone, `pytest -m "not e2e"` skips them
    config.addinivalue_line("markers", "e2e: slow end-to-end run (real training or real processes)")
