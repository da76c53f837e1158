"""Fixtures shared by the unit tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on the shared 2-core machine two OpenMP threads
    competing with other jobs make a SmolLM2 step 5–20× slower (the numbers don't depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
