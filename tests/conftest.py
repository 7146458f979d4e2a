import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def f64():
    """Run a test in float64 (the default dtype is restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (restored afterwards): tiny workloads only pay for thread overhead."""
    from _helpers import one_thread as _one_thread

    with _one_thread():
        yield
