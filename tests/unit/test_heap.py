"""Tests of :mod:`phantom.heap`: large allocations reuse freed memory inside ``reused()`` only."""
from __future__ import annotations

import resource

import pytest
import torch

from phantom import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="phantom.heap acts on glibc only")

MIB = 1 << 20


def minor_faults_of_fresh_buffers(n: int = 4, size: int = 256 * MIB) -> int:
    """Minor page faults while allocating, filling and freeing ``n`` buffers of ``size`` bytes."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(size // 4).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_reused_heap_stops_refaulting_freed_buffers():
    pages = 256 * MIB // resource.getpagesize()
    outside = minor_faults_of_fresh_buffers()
    assert outside >= 3 * pages               # glibc mmaps each buffer afresh: every page faults
    with heap.reused():
        inside = minor_faults_of_fresh_buffers()
    assert inside < 2 * pages                 # the first buffer faults; the others reuse its pages
    assert minor_faults_of_fresh_buffers() >= 3 * pages   # defaults restored on exit


def test_reused_heap_restores_the_defaults_after_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with heap.reused():
            raise RuntimeError("inside")
    assert minor_faults_of_fresh_buffers() >= 3 * 256 * MIB // resource.getpagesize()


def test_reused_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.reused():
        assert torch.ones(4).sum() == 4
