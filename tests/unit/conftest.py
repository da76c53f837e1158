"""Fixtures shared by the unit tests."""
import gc

import pytest
import torch

from phantom import zoo


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on the shared 2-core machine two OpenMP threads
    competing with other jobs make a SmolLM2 step 5–20× slower (the numbers don't depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _released(name: str):
    loaded = zoo.load(name)
    yield loaded
    del loaded
    gc.collect()


@pytest.fixture(scope="module")
def smol():
    """The real SmolLM2-135M, loaded once per module and released after it."""
    yield from _released("smollm2-135m")


@pytest.fixture(scope="module")
def gemma():
    """The real Gemma-3-270M, loaded once per module and released after it."""
    yield from _released("gemma3-270m")
