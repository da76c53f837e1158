"""Benchmarks run on one torch thread: on the shared 2-core machine two OpenMP threads competing
with other jobs make a step 5–20× slower and the timings meaningless."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
