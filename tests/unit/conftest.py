"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a shared, loaded machine are ~50x slower than one for these tiny
    models; the thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
