"""Tests of :mod:`phantom.heap`: large allocations reuse freed memory inside ``reused()`` only.

Page faults are counted in a fresh interpreter: a long-lived test process's heap layout
(other tests' allocations, threads) is not the one a fine-tuning worker starts from.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from phantom import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="phantom.heap acts on glibc only")

PROBE = r"""
import json, resource, torch
from phantom import heap

def faults(n=4, size=256 << 20):   # minor page faults while filling and freeing n fresh buffers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(size // 4).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"outside": faults()}
with heap.reused():
    out["inside"] = faults()
try:
    with heap.reused():
        raise RuntimeError
except RuntimeError:
    pass
out["after"] = faults()
out["pages"] = (256 << 20) // resource.getpagesize()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def faults() -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_reused_heap_stops_refaulting_freed_buffers(faults):
    assert faults["outside"] >= 3 * faults["pages"]    # glibc mmaps each buffer afresh: every page faults
    assert faults["inside"] < 2 * faults["pages"]      # the first buffer faults; the others reuse its pages


def test_reused_heap_restores_the_defaults_on_exit_and_after_an_error(faults):
    assert faults["after"] >= 3 * faults["pages"]


def test_reused_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.reused():
        assert torch.ones(4).sum() == 4
