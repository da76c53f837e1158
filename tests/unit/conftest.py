"""Fixtures shared by the unit tests."""
import gc
import subprocess

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


@pytest.fixture
def read_only_view(tmp_path):
    """``view(base) -> path``: ``base`` seen through a read-only bind mount, unmounted after the test.

    As root, permission bits stop nothing, so a read-only mount is the one way to make a directory
    this process cannot write; the test is skipped where mounting is not allowed.
    """
    mounts = []

    def view(base):
        ro = tmp_path / f"read-only-{len(mounts)}"
        ro.mkdir()
        mount = subprocess.run(["mount", "--bind", str(base), str(ro)], capture_output=True)
        if mount.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {mount.stderr.decode().strip()}")
        mounts.append(ro)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        return ro

    yield view
    for ro in reversed(mounts):
        subprocess.run(["umount", str(ro)], check=True)
